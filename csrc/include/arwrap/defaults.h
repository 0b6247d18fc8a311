// The defaults several options structs and operator schemas share, written once.
#pragma once

#include <cstdint>

namespace arwrap::defaults {

// The target that is never scored (PyTorch's and x-transformers' ignore_index).
inline constexpr int64_t ignore_index = -100;
// x-transformers 2.31.10's AutoregressiveWrapper: the continuous head's loss weight and a
// looped net's exit-gate training.
inline constexpr double next_embed_loss_weight = 0.1;
inline constexpr double looped_loss_threshold_exit = 0.05;
inline constexpr double looped_loss_slope = 50.0;
inline constexpr double looped_exit_loss_weight = 1.0;

}  // namespace arwrap::defaults

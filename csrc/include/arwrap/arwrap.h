// Umbrella header for C++ users of libarwrap.
#pragma once

#include <arwrap/autoregressive_loss.h>
#include <arwrap/distributed.h>
#include <arwrap/ops.h>
#include <arwrap/transformer.h>
#include <arwrap/version.h>
#include <arwrap/wrapper.h>

# AddressSanitizer + UndefinedBehaviorSanitizer builds (-DARWRAP_SANITIZE=ON).
#
# Included once, before the targets are defined (CMakeLists.txt: `include(cmake/ArwrapSanitize.cmake)`
# after the options; or, without touching CMakeLists.txt, -DCMAKE_PROJECT_INCLUDE=<this file>, which is
# how scripts/sanitize.sh uses it). With the option ON it adds the sanitizer flags to every C++
# compile and link of the project, so libarwrap (and _C, when built) is instrumented:
#   -fsanitize=address,undefined   ASan (heap/stack/global overflows, use-after-free, double free)
#                                  and UBSan (signed overflow, bad shifts, misaligned or null
#                                  accesses, out-of-bounds array indices, invalid enum/bool values)
#   -fno-sanitize-recover=all      the first UBSan error aborts (non-zero exit), as ASan's do
#   -fno-omit-frame-pointer -g     usable stack traces
# LibTorch itself is not instrumented: ASan still sees every heap access our code makes (its
# allocator interposes malloc/new process-wide), but not the bugs inside torch's own kernels.
# A program that loads an instrumented libarwrap must have the ASan runtime first in its library
# list: build the program with the same flags (scripts/sanitize.sh does), or LD_PRELOAD libasan.
include_guard(GLOBAL)

option(ARWRAP_SANITIZE "Build with AddressSanitizer and UndefinedBehaviorSanitizer" OFF)

set(ARWRAP_SANITIZE_FLAGS "-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -g"
    CACHE STRING "Compile flags of ARWRAP_SANITIZE=ON builds")
set(ARWRAP_SANITIZE_LINK_FLAGS "-fsanitize=address,undefined" CACHE STRING "Link flags of ARWRAP_SANITIZE=ON builds")

if(ARWRAP_SANITIZE)
  if(NOT CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
    message(FATAL_ERROR "arwrap: ARWRAP_SANITIZE=ON needs GCC or Clang (got ${CMAKE_CXX_COMPILER_ID})")
  endif()
  string(APPEND CMAKE_CXX_FLAGS " ${ARWRAP_SANITIZE_FLAGS}")
  string(APPEND CMAKE_SHARED_LINKER_FLAGS " ${ARWRAP_SANITIZE_LINK_FLAGS}")
  string(APPEND CMAKE_MODULE_LINKER_FLAGS " ${ARWRAP_SANITIZE_LINK_FLAGS}")
  string(APPEND CMAKE_EXE_LINKER_FLAGS " ${ARWRAP_SANITIZE_LINK_FLAGS}")
  message(STATUS "arwrap: AddressSanitizer + UndefinedBehaviorSanitizer build (${ARWRAP_SANITIZE_FLAGS})")
endif()

# Per-target alternative, for programs that consume the package (tests/cpp): the same flags on
# one target only.
function(arwrap_enable_sanitizers target)
  separate_arguments(_flags UNIX_COMMAND "${ARWRAP_SANITIZE_FLAGS}")
  separate_arguments(_link UNIX_COMMAND "${ARWRAP_SANITIZE_LINK_FLAGS}")
  target_compile_options(${target} PRIVATE ${_flags})
  target_link_options(${target} PRIVATE ${_link})
endfunction()

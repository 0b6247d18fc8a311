# arwrap::distributed (csrc/distributed): data parallelism on c10d, the distributed engine inside
# LibTorch. libtorch_cpu exports c10d::TCPStore and c10d::ProcessGroupGloo, and the torch wheel ships
# c10d's headers, but not gloo's own headers, which ProcessGroupGloo.hpp includes. Debian/Ubuntu's
# libgloo-dev has them (headers only are used: the symbols come from libtorch_cpu, not Debian's libgloo).
#   ARWRAP_WITH_DISTRIBUTED=AUTO  build it when the headers are found, else say what is missing
#                           ON    fail the configure without them
#                           OFF   one-process stubs: a multi-process launch fails with a clear error
# ARWRAP_GLOO_INCLUDE_DIR points at another gloo checkout (the directory holding gloo/algorithm.h).
set(_arwrap_dist_common csrc/distributed/process_group.cpp csrc/distributed/reducer.cpp)
set(_arwrap_with_distributed OFF)
set(_arwrap_dist_missing "")
if(NOT ARWRAP_WITH_DISTRIBUTED STREQUAL "OFF")
  find_path(ARWRAP_GLOO_INCLUDE_DIR gloo/algorithm.h DOC "directory that holds gloo/algorithm.h (libgloo-dev)")
  find_path(ARWRAP_C10D_INCLUDE_DIR torch/csrc/distributed/c10d/ProcessGroupGloo.hpp
            HINTS "${ARWRAP_TORCH_CONFIG_DIR}/../../../include" NO_CACHE)
  if(NOT ARWRAP_GLOO_INCLUDE_DIR OR NOT EXISTS "${ARWRAP_GLOO_INCLUDE_DIR}/gloo/algorithm.h")
    unset(ARWRAP_GLOO_INCLUDE_DIR CACHE)  # search again at the next configure (e.g. after apt-get)
    string(CONCAT _arwrap_dist_missing "the gloo headers (gloo/algorithm.h) are missing: install them with "
           "`apt-get install libgloo-dev` (Debian/Ubuntu, as root; scripts/bootstrap.sh does it), or pass "
           "-DARWRAP_GLOO_INCLUDE_DIR=<dir holding gloo/algorithm.h>")
  elseif(NOT ARWRAP_C10D_INCLUDE_DIR)
    string(CONCAT _arwrap_dist_missing "torch's c10d headers (torch/csrc/distributed/c10d/ProcessGroupGloo.hpp) are "
           "missing: this torch was built without distributed support")
  else()
    set(_arwrap_with_distributed ON)
  endif()
endif()
if(ARWRAP_WITH_DISTRIBUTED STREQUAL "ON" AND NOT _arwrap_with_distributed)
  message(FATAL_ERROR "arwrap: ARWRAP_WITH_DISTRIBUTED=ON, but ${_arwrap_dist_missing}")
endif()
if(_arwrap_with_distributed)
  set(ARWRAP_DISTRIBUTED_SOURCES ${_arwrap_dist_common} csrc/distributed/gloo_backend.cpp)
  message(STATUS "arwrap: distributed (c10d/Gloo): ON, gloo headers at ${ARWRAP_GLOO_INCLUDE_DIR}")
elseif(ARWRAP_WITH_DISTRIBUTED STREQUAL "OFF")
  set(ARWRAP_DISTRIBUTED_SOURCES ${_arwrap_dist_common} csrc/distributed/no_backend.cpp)
  message(STATUS "arwrap: distributed (c10d/Gloo): OFF (ARWRAP_WITH_DISTRIBUTED=OFF); one process only")
else()
  set(ARWRAP_DISTRIBUTED_SOURCES ${_arwrap_dist_common} csrc/distributed/no_backend.cpp)
  message(WARNING "arwrap: distributed (c10d/Gloo): OFF, ${_arwrap_dist_missing}. arwrap-train and "
                  "arwrap::distributed then run one process only; a multi-process launch fails with this advice.")
endif()

function(arwrap_distributed_configure target)
  if(_arwrap_with_distributed)
    # gloo's headers, for the one file that includes ProcessGroupGloo.hpp; the public header
    # arwrap/distributed.h needs none of them
    set_source_files_properties(csrc/distributed/gloo_backend.cpp PROPERTIES
      COMPILE_DEFINITIONS "USE_C10D_GLOO" INCLUDE_DIRECTORIES "${ARWRAP_GLOO_INCLUDE_DIR}")
    # for consumers (#ifdef ARWRAP_WITH_DISTRIBUTED); our own sources pick the transport by file, so the
    # other translation units keep their compile line (and their ccache entries)
    target_compile_definitions(${target} INTERFACE ARWRAP_WITH_DISTRIBUTED)
  endif()
endfunction()

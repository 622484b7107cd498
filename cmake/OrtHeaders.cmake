# Finds the ONNX Runtime C/C++ API headers and defines ORT_INCLUDE_DIR (cache) and the
# INTERFACE target maskedmha::ort_headers.
#
# We link nothing from ORT: the custom-op library gets the whole C API through the OrtApiBase
# pointer passed to RegisterCustomOps, so headers are all we need.  The library is written for C
# API versions kMinOrtApi..kMaxOrtApi (ops/ort_api.h, read below: 17..21) and negotiates with the
# running ORT at registration, so one build loads into every ORT from 1.17 on.  The headers must
# declare at least kMaxOrtApi (ORT_API_VERSION, parsed from onnxruntime_c_api.h, is checked
# here); newer headers are accepted (the C API is append-only and the op still declares at most
# kMaxOrtApi), older ones are refused with a message.  The fallbacks (c) and (d) are pinned to
# ORT 1.21.0 headers (API 21), the ones the library is tested with.
#
# Search order (first hit wins):
#   (a) -DORT_INCLUDE_DIR=... or the environment variable ORT_INCLUDE_DIR
#   (b) the system package layout /usr/include/onnxruntime (Debian 13 libonnxruntime-dev)
#   (c) `apt-get download libonnxruntime-dev=1.21.0+dfsg-1` (the version Debian trixie carries)
#       through a private apt state kept inside the build tree (needs apt-get and dpkg-deb,
#       installs nothing, no root); the .deb's SHA-256 is checked
#   (d) the official release archive onnxruntime-linux-x64-<ver>.tgz from GitHub
#       (set MASKEDMHA_ORT_DOWNLOAD=OFF to forbid it)
# Results of (c)/(d) are cached in ${MASKEDMHA_ORT_CACHE_DIR}, so re-configures do not refetch.

include_guard(GLOBAL)

set(MASKEDMHA_ORT_CACHE_DIR "${CMAKE_BINARY_DIR}/_ort_headers" CACHE PATH
    "Where fetched ONNX Runtime headers are kept")
set(MASKEDMHA_ORT_DEBIAN_SUITE "trixie" CACHE STRING "Debian suite for the apt-get download fallback")
set(MASKEDMHA_ORT_DEBIAN_MIRROR "http://deb.debian.org/debian" CACHE STRING "Debian mirror for the fallback")
set(MASKEDMHA_ORT_RELEASE_VERSION "1.21.0" CACHE STRING "ORT release for the GitHub archive fallback")
# Pinned so that a build is reproducible: whatever trixie carries later, this exact package (or
# a clear failure) is what the fallback fetches.  A different version needs both values changed.
set(MASKEDMHA_ORT_DEBIAN_VERSION "1.21.0+dfsg-1" CACHE STRING
    "libonnxruntime-dev version for the apt-get download fallback")
set(MASKEDMHA_ORT_DEBIAN_SHA256 "14f7d959d5deacbcf1504830d4189f91fc67382b399ed9ae9d3aa9c4050ced08"
    CACHE STRING "SHA-256 of libonnxruntime-dev_<MASKEDMHA_ORT_DEBIAN_VERSION>_amd64.deb")

# The C API range the library is written for (single source: ops/ort_api.h).
set(_maskedmha_ort_api_h "${CMAKE_CURRENT_LIST_DIR}/../ops/ort_api.h")
file(STRINGS "${_maskedmha_ort_api_h}" _api_lines REGEX "constexpr uint32_t kM(in|ax)OrtApi = [0-9]+;")
foreach(_l IN LISTS _api_lines)
  if(_l MATCHES "kMinOrtApi = ([0-9]+);")
    set(MASKEDMHA_ORT_API_MIN "${CMAKE_MATCH_1}")
  elseif(_l MATCHES "kMaxOrtApi = ([0-9]+);")
    set(MASKEDMHA_ORT_API_MAX "${CMAKE_MATCH_1}")
  endif()
endforeach()
if(NOT MASKEDMHA_ORT_API_MIN OR NOT MASKEDMHA_ORT_API_MAX)
  message(FATAL_ERROR "could not read kMinOrtApi / kMaxOrtApi from ${_maskedmha_ort_api_h}")
endif()
option(MASKEDMHA_ORT_DOWNLOAD "Allow fetching ONNX Runtime headers (apt-get download / GitHub)" ON)

function(_maskedmha_ort_dir_ok dir out)
  if(dir AND EXISTS "${dir}/onnxruntime_cxx_api.h" AND EXISTS "${dir}/onnxruntime_c_api.h")
    set(${out} TRUE PARENT_SCOPE)
  else()
    set(${out} FALSE PARENT_SCOPE)
  endif()
endfunction()

# (c) Debian package, downloaded (not installed) with a throw-away apt configuration.
function(_maskedmha_ort_from_debian out)
  set(${out} "" PARENT_SCOPE)
  find_program(_APT_GET apt-get)
  find_program(_DPKG_DEB dpkg-deb)
  if(NOT _APT_GET OR NOT _DPKG_DEB)
    message(STATUS "ORT headers: apt-get/dpkg-deb not available, skipping the Debian fallback")
    return()
  endif()
  set(d "${MASKEDMHA_ORT_CACHE_DIR}/apt")
  set(extract "${MASKEDMHA_ORT_CACHE_DIR}/deb")
  file(MAKE_DIRECTORY "${d}/lists/partial" "${d}/cache/archives/partial")
  file(WRITE "${d}/sources.list"
       "deb ${MASKEDMHA_ORT_DEBIAN_MIRROR} ${MASKEDMHA_ORT_DEBIAN_SUITE} main\n")
  set(apt_opts
      -o "Dir::Etc::SourceList=${d}/sources.list"
      -o "Dir::Etc::SourceParts=/dev/null"
      -o "Dir::State::Lists=${d}/lists"
      -o "Dir::Cache=${d}/cache"
      -o "Debug::NoLocking=1"
      -q)
  message(STATUS "ORT headers: fetching libonnxruntime-dev=${MASKEDMHA_ORT_DEBIAN_VERSION} from Debian ${MASKEDMHA_ORT_DEBIAN_SUITE} (apt-get download)")
  execute_process(COMMAND "${_APT_GET}" ${apt_opts} update
                  WORKING_DIRECTORY "${d}" RESULT_VARIABLE rc OUTPUT_QUIET ERROR_VARIABLE err
                  TIMEOUT 300)
  if(NOT rc EQUAL 0)
    message(STATUS "ORT headers: apt-get update failed (${rc}): ${err}")
    return()
  endif()
  file(GLOB old_debs "${d}/libonnxruntime-dev_*.deb")
  if(old_debs)
    file(REMOVE ${old_debs})
  endif()
  set(pkg "libonnxruntime-dev=${MASKEDMHA_ORT_DEBIAN_VERSION}")
  execute_process(COMMAND "${_APT_GET}" ${apt_opts} download "${pkg}"
                  WORKING_DIRECTORY "${d}" RESULT_VARIABLE rc OUTPUT_QUIET ERROR_VARIABLE err
                  TIMEOUT 300)
  file(GLOB debs "${d}/libonnxruntime-dev_*.deb")
  if(NOT rc EQUAL 0 OR NOT debs)
    message(STATUS "ORT headers: apt-get download ${pkg} failed (${rc}; Debian may have replaced "
                   "that version, see MASKEDMHA_ORT_DEBIAN_VERSION): ${err}")
    return()
  endif()
  list(GET debs 0 deb)
  file(SHA256 "${deb}" sha)
  if(NOT sha STREQUAL MASKEDMHA_ORT_DEBIAN_SHA256)
    message(STATUS "ORT headers: ${deb} has SHA-256 ${sha}, expected ${MASKEDMHA_ORT_DEBIAN_SHA256}; not used")
    return()
  endif()
  file(REMOVE_RECURSE "${extract}")
  file(MAKE_DIRECTORY "${extract}")
  execute_process(COMMAND "${_DPKG_DEB}" -x "${deb}" "${extract}" RESULT_VARIABLE rc ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(STATUS "ORT headers: dpkg-deb -x ${deb} failed: ${err}")
    return()
  endif()
  # Marks the extracted copy as this pinned package (a copy without it is fetched again).
  file(WRITE "${extract}/.maskedmha-deb" "${MASKEDMHA_ORT_DEBIAN_VERSION} ${MASKEDMHA_ORT_DEBIAN_SHA256}\n")
  set(${out} "${extract}/usr/include/onnxruntime" PARENT_SCOPE)
endfunction()

# (d) Official release archive (needs access to github.com).
function(_maskedmha_ort_from_github out)
  set(${out} "" PARENT_SCOPE)
  set(ver "${MASKEDMHA_ORT_RELEASE_VERSION}")
  set(name "onnxruntime-linux-x64-${ver}")
  set(url "https://github.com/microsoft/onnxruntime/releases/download/v${ver}/${name}.tgz")
  set(tgz "${MASKEDMHA_ORT_CACHE_DIR}/${name}.tgz")
  message(STATUS "ORT headers: downloading ${url}")
  file(DOWNLOAD "${url}" "${tgz}" STATUS st TIMEOUT 300 INACTIVITY_TIMEOUT 60)
  list(GET st 0 code)
  if(NOT code EQUAL 0)
    list(GET st 1 msg)
    message(STATUS "ORT headers: download failed: ${msg}")
    file(REMOVE "${tgz}")
    return()
  endif()
  file(ARCHIVE_EXTRACT INPUT "${tgz}" DESTINATION "${MASKEDMHA_ORT_CACHE_DIR}/gh"
       PATTERNS "${name}/include/*")
  set(${out} "${MASKEDMHA_ORT_CACHE_DIR}/gh/${name}/include" PARENT_SCOPE)
endfunction()

if(NOT TARGET maskedmha::ort_headers)
  set(_ort_dir "")
  set(_ort_how "")
  # (a) explicit
  if(ORT_INCLUDE_DIR)
    set(_ort_dir "${ORT_INCLUDE_DIR}")
    set(_ort_how "ORT_INCLUDE_DIR")
  elseif(DEFINED ENV{ORT_INCLUDE_DIR} AND NOT "$ENV{ORT_INCLUDE_DIR}" STREQUAL "")
    set(_ort_dir "$ENV{ORT_INCLUDE_DIR}")
    set(_ort_how "environment ORT_INCLUDE_DIR")
  endif()
  if(_ort_how)
    _maskedmha_ort_dir_ok("${_ort_dir}" _ok)
    if(NOT _ok)
      # An explicit choice that is wrong is an error, not something to paper over.
      message(FATAL_ERROR "${_ort_how}=${_ort_dir} does not contain onnxruntime_cxx_api.h")
    endif()
  endif()
  # Previously fetched copy (cache of (c)/(d)), only if it is the pinned one.
  if(NOT _ort_how)
    set(_stamp "${MASKEDMHA_ORT_CACHE_DIR}/deb/.maskedmha-deb")
    set(_want "${MASKEDMHA_ORT_DEBIAN_VERSION} ${MASKEDMHA_ORT_DEBIAN_SHA256}")
    set(_have "")
    if(EXISTS "${_stamp}")
      file(STRINGS "${_stamp}" _have LIMIT_COUNT 1)
    endif()
    if(NOT _have STREQUAL _want)
      # A copy extracted before the stamp existed: accepted when the .deb it came from (kept
      # beside it) is the pinned one, so existing build trees are not fetched again.
      file(GLOB _cached_debs "${MASKEDMHA_ORT_CACHE_DIR}/apt/libonnxruntime-dev_*.deb")
      foreach(_deb IN LISTS _cached_debs)
        file(SHA256 "${_deb}" _sha)
        if(_sha STREQUAL MASKEDMHA_ORT_DEBIAN_SHA256)
          set(_have "${_want}")
        endif()
      endforeach()
    endif()
    set(_candidates "${MASKEDMHA_ORT_CACHE_DIR}/gh/onnxruntime-linux-x64-${MASKEDMHA_ORT_RELEASE_VERSION}/include")
    if(_have STREQUAL _want)
      list(PREPEND _candidates "${MASKEDMHA_ORT_CACHE_DIR}/deb/usr/include/onnxruntime")
    endif()
    foreach(c IN LISTS _candidates)
      _maskedmha_ort_dir_ok("${c}" _ok)
      if(_ok)
        set(_ort_dir "${c}")
        set(_ort_how "previously fetched copy")
        break()
      endif()
    endforeach()
  endif()
  # (b) system layout
  if(NOT _ort_how)
    _maskedmha_ort_dir_ok("/usr/include/onnxruntime" _ok)
    if(_ok)
      set(_ort_dir "/usr/include/onnxruntime")
      set(_ort_how "system headers")
    endif()
  endif()
  # (c), (d)
  if(NOT _ort_how AND MASKEDMHA_ORT_DOWNLOAD)
    _maskedmha_ort_from_debian(_c)
    _maskedmha_ort_dir_ok("${_c}" _ok)
    if(_ok)
      set(_ort_dir "${_c}")
      set(_ort_how "Debian ${MASKEDMHA_ORT_DEBIAN_SUITE} libonnxruntime-dev ${MASKEDMHA_ORT_DEBIAN_VERSION} (apt-get download)")
    else()
      _maskedmha_ort_from_github(_d)
      _maskedmha_ort_dir_ok("${_d}" _ok)
      if(_ok)
        set(_ort_dir "${_d}")
        set(_ort_how "GitHub release ${MASKEDMHA_ORT_RELEASE_VERSION}")
      endif()
    endif()
  endif()
  if(NOT _ort_how)
    message(FATAL_ERROR
      "ONNX Runtime headers not found. Pass -DORT_INCLUDE_DIR=<dir with onnxruntime_cxx_api.h> "
      "(or set the environment variable ORT_INCLUDE_DIR), install libonnxruntime-dev, or allow "
      "the download fallback (MASKEDMHA_ORT_DOWNLOAD=ON).")
  endif()
  file(STRINGS "${_ort_dir}/onnxruntime_c_api.h" _ver_line REGEX "^#define ORT_API_VERSION [0-9]+")
  if(NOT _ver_line MATCHES "^#define ORT_API_VERSION ([0-9]+)")
    message(FATAL_ERROR "${_ort_dir}/onnxruntime_c_api.h defines no ORT_API_VERSION: not ONNX Runtime headers?")
  endif()
  set(MASKEDMHA_ORT_API_VERSION "${CMAKE_MATCH_1}")
  if(MASKEDMHA_ORT_API_VERSION LESS MASKEDMHA_ORT_API_MAX)
    message(FATAL_ERROR
      "ORT headers in ${_ort_dir} (${_ort_how}) have ORT_API_VERSION ${MASKEDMHA_ORT_API_VERSION}; "
      "the library is written for C API ${MASKEDMHA_ORT_API_MIN}..${MASKEDMHA_ORT_API_MAX} "
      "(ops/ort_api.h) and needs headers of ONNX Runtime 1.${MASKEDMHA_ORT_API_MAX} or newer. "
      "Pass -DORT_INCLUDE_DIR=<such headers>, or leave it unset to fetch the pinned ones.")
  endif()
  message(STATUS "ORT headers: ${_ort_dir} (${_ort_how}, ORT_API_VERSION ${MASKEDMHA_ORT_API_VERSION}; "
                 "the library uses C API ${MASKEDMHA_ORT_API_MIN}..${MASKEDMHA_ORT_API_MAX})")
  set(ORT_INCLUDE_DIR "${_ort_dir}" CACHE PATH "Directory containing onnxruntime_cxx_api.h" FORCE)
  add_library(maskedmha_ort_headers INTERFACE)
  target_include_directories(maskedmha_ort_headers SYSTEM INTERFACE "${_ort_dir}")
  add_library(maskedmha::ort_headers ALIAS maskedmha_ort_headers)
endif()

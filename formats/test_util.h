// Test helpers for formats/: hand-built safetensors bytes and scratch files.
#pragma once

#include <cstdint>
#include <string>

namespace bigplan::testing {

// A fresh empty directory under $TEST_TMPDIR (or /tmp), unique per call.
std::string NewTempDir(const std::string& name);

// 8-byte little-endian length + header + data.
std::string SafetensorsBytes(const std::string& header_json, const std::string& data);
// Same, but with an explicit (possibly lying) header length.
std::string SafetensorsBytesWithLength(uint64_t header_length, const std::string& header_json,
                                       const std::string& data);

void WriteFileOrDie(const std::string& path, const std::string& bytes);
std::string ReadFileOrDie(const std::string& path);

}  // namespace bigplan::testing

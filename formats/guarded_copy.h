// Reading memory-mapped files that may shrink under a running process.
//
// A read from a mapped page that lies past the end of its file (someone truncated or rewrote the file after it was
// mapped) raises SIGBUS, which kills the process by default. Two mechanisms turn that into an error naming the file:
//
//  - GuardedCopy: a memcpy out of a mapping that catches the fault (sigsetjmp/siglongjmp on the copying thread)
//    and returns kIo at once. For code that copies mapped bytes somewhere else (staging buffers, casts).
//  - Registered regions (RegisterMappedRegion / MappedFile::ProtectFromTruncation): for bytes that other code reads
//    in place (LibTorch kernels computing from weights used where they are mapped, cudaMemcpy from the mapping),
//    where a jump out of the middle of the reader is not safe. A fault inside a registered region replaces the
//    faulting page with a page of zeros, marks the region damaged and lets the reader continue; the owner must
//    call CheckMappedRegions() (or MappedFile::CheckIntact()) after the reads and discard what was computed.
//
// A SIGBUS that is neither inside an active GuardedCopy source range nor inside a registered region goes to the
// handler that was installed before ours (or the default action: the process dies, as before). The handler is
// installed process-wide on first use and never removed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "support/result.h"

namespace bigplan {

// Copies n bytes from `src` (inside a memory-mapped file named `file_name`) to `dst`. If part of the source is no
// longer backed by the file, returns kIo ("<file_name>: the file shrank while it was being read: no data at
// <address offset> ...") and `dst` holds an unspecified prefix of the bytes; the process keeps running and the
// containing registered region, if any, is marked damaged. Thread-safe; `dst` must be ordinary writable memory.
Status GuardedCopy(void* dst, const void* src, size_t n, const std::string& file_name);

// GuardedCopy into a buffer of the calling thread (grown as needed and reused by its next call); `*out` points at
// the copy. For casts that must read the bytes twice or with code that cannot be guarded.
Status GuardedCopyToBounce(const void* src, size_t n, const std::string& file_name, const uint8_t** out);

// Registers [base, base + size) as a mapping of `file_name` (see above). Returns an id for UnregisterMappedRegion,
// or -1 when the table (4096 regions) is full (the region is then unprotected). Thread-safe.
int RegisterMappedRegion(const void* base, size_t size, const std::string& file_name);
void UnregisterMappedRegion(int id);

// Ok, or kIo naming the first registered region that has been damaged since it was registered:
// "<file>: the file shrank while it was in use (byte N of the mapping could not be read); everything computed from
// it since is invalid". Damage is permanent for the life of the registration.
Status CheckMappedRegions();
Status CheckMappedRegion(int id);

}  // namespace bigplan

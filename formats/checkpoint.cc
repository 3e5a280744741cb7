#include "formats/checkpoint.h"

#include <algorithm>
#include <filesystem>
#include <set>
#include <system_error>
#include <utility>

#include "formats/json_util.h"
#include "formats/mapped_file.h"
#include "support/file_read.h"
#include "support/sha256.h"

namespace bigplan {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::string Quote(const std::string& s) { return "\"" + s + "\""; }

bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string JoinPath(const std::string& dir, const std::string& name) {
  if (dir.empty() || (!name.empty() && name[0] == '/')) return name;
  if (dir.back() == '/') return dir + name;
  return dir + "/" + name;
}

std::string ParentDir(const std::string& path) {
  std::string parent = fs::path(path).parent_path().string();
  return parent.empty() ? "." : parent;
}

std::string BaseName(const std::string& path) { return fs::path(path).filename().string(); }

bool IsRegularFile(const std::string& path) {
  std::error_code ec;
  return fs::is_regular_file(path, ec);
}

// Sorted names of the regular files in `dir` for which `keep` holds.
Result<std::vector<std::string>> ListDir(const std::string& dir, bool (*keep)(const std::string&)) {
  std::vector<std::string> names;
  std::error_code ec;
  fs::directory_iterator it(dir, ec), end;
  if (ec) return MakeError(ErrorCode::kIo, dir + ": cannot list directory: " + ec.message());
  for (; it != end; it.increment(ec)) {
    if (ec) return MakeError(ErrorCode::kIo, dir + ": cannot list directory: " + ec.message());
    std::string name = it->path().filename().string();
    std::error_code ec2;
    if (!it->is_regular_file(ec2)) continue;
    if (keep(name)) names.push_back(name);
  }
  std::sort(names.begin(), names.end());
  return names;
}

bool IsSafetensorsName(const std::string& n) { return EndsWith(n, ".safetensors"); }
bool IsSafetensorsIndexName(const std::string& n) { return EndsWith(n, ".safetensors.index.json"); }

Result<std::map<std::string, std::string>> ReadIndexFile(const std::string& path) {
  BIGPLAN_ASSIGN_OR_RETURN(std::string text, ReadBoundedFile(path, kIndexFile));
  return ParseIndexJson(text, path);
}

}  // namespace

Status CheckShardNameContained(const std::string& file_name, const std::string& tensor, const std::string& source) {
  auto bad = [&](const std::string& why) {
    std::string shown;
    for (char c : file_name) shown += (c == '\0') ? std::string("\\0") : std::string(1, c);
    return MakeError(ErrorCode::kCorrupt, source + ": tensor " + Quote(tensor) + ": shard file name " + Quote(shown) +
                                              " " + why + "; shard names must be relative paths inside the model "
                                              "directory");
  };
  if (file_name.find('\0') != std::string::npos) return bad("contains a NUL byte");
  const fs::path p(file_name);
  if (p.is_absolute() || p.has_root_name() || p.has_root_directory()) return bad("is an absolute path");
  const fs::path normal = p.lexically_normal();
  if (normal.empty() || normal == "." || normal.filename().empty()) return bad("names no file");
  for (const fs::path& part : normal) {
    if (part == "..") return bad("leaves the model directory");
  }
  return Status::Ok();
}

Result<std::map<std::string, std::string>> ParseIndexJson(std::string_view text, const std::string& source) {
  BIGPLAN_ASSIGN_OR_RETURN(json root, formats_internal::ParseJsonStrict(text, source));
  if (!root.is_object()) {
    return MakeError(ErrorCode::kCorrupt,
                     source + ": index is a JSON " + std::string(root.type_name()) + ", not an object");
  }
  const json* map = &root;
  auto wm = root.find("weight_map");
  if (wm != root.end()) {
    if (!wm->is_object()) {
      return MakeError(ErrorCode::kCorrupt, source + ": \"weight_map\" is a JSON " + std::string(wm->type_name()) +
                                                ", not an object");
    }
    map = &*wm;
  }
  std::map<std::string, std::string> result;
  for (auto it = map->begin(); it != map->end(); ++it) {
    if (!it->is_string()) {
      return MakeError(ErrorCode::kCorrupt, source + ": tensor " + Quote(it.key()) + ": shard file name is a JSON " +
                                                std::string(it->type_name()) + ", not a string");
    }
    const std::string& file = it->get_ref<const std::string&>();
    if (file.empty()) {
      return MakeError(ErrorCode::kCorrupt, source + ": tensor " + Quote(it.key()) + ": empty shard file name");
    }
    BIGPLAN_RETURN_IF_ERROR(CheckShardNameContained(file, it.key(), source));
    // Opened as checked: "sub/../a" is "a" even where sub is a link to elsewhere.
    result.emplace(it.key(), fs::path(file).lexically_normal().string());
  }
  return result;
}

const TensorLocation* Checkpoint::Find(const std::string& name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &tensors_[it->second];
}

uint64_t Checkpoint::total_bytes() const {
  uint64_t total = 0;
  for (const TensorLocation& t : tensors_) total += t.size_bytes;
  return total;
}

Result<Checkpoint> Checkpoint::Open(const std::string& path) {
  std::error_code ec;
  fs::file_status st = fs::status(path, ec);
  if (ec || !fs::exists(st)) {
    return MakeError(ErrorCode::kNotFound, path + ": no such file or directory");
  }

  std::string directory;
  std::string index_path;
  std::map<std::string, std::string> index;  // tensor -> shard file name (with an index)
  std::vector<std::string> shard_names;       // relative to `directory`
  bool have_index = false;

  if (fs::is_directory(st)) {
    directory = path;
    std::string hf = JoinPath(directory, "model.safetensors.index.json");
    std::error_code exists_ec;
    // Present but not a regular file (a FIFO, a device): read it anyway, so that the refusal names it.
    if (IsRegularFile(hf) || fs::exists(fs::symlink_status(hf, exists_ec))) {
      index_path = hf;
    } else {
      BIGPLAN_ASSIGN_OR_RETURN(std::vector<std::string> indexes, ListDir(directory, IsSafetensorsIndexName));
      if (indexes.size() > 1) {
        std::string names;
        for (const std::string& n : indexes) names += (names.empty() ? "" : ", ") + n;
        return MakeError(ErrorCode::kInvalidArgument,
                         directory + ": several safetensors indexes (" + names + "); pass the one to use");
      }
      if (indexes.size() == 1) index_path = JoinPath(directory, indexes[0]);
    }
    if (!index_path.empty()) {
      BIGPLAN_ASSIGN_OR_RETURN(index, ReadIndexFile(index_path));
      have_index = true;
    } else {
      // The flat index of the Accelerate docs, if it maps tensors to safetensors shards. An index.json of another
      // kind (e.g. Accelerate's offload index) is ignored.
      std::string flat = JoinPath(directory, "index.json");
      if (IsRegularFile(flat)) {
        auto parsed = ReadIndexFile(flat);
        bool usable = parsed.ok() && !parsed->empty();
        if (usable) {
          for (const auto& [tensor, file] : *parsed) usable = usable && IsSafetensorsName(file);
        }
        if (usable) {
          index = std::move(parsed).value();
          index_path = flat;
          have_index = true;
        }
      }
    }
    if (!have_index) {
      BIGPLAN_ASSIGN_OR_RETURN(shard_names, ListDir(directory, IsSafetensorsName));
      if (shard_names.empty()) {
        return MakeError(ErrorCode::kNotFound, directory + ": no *.safetensors files and no index");
      }
    }
  } else if (IsSafetensorsName(path)) {
    directory = ParentDir(path);
    shard_names.push_back(BaseName(path));
  } else {
    index_path = path;
    directory = ParentDir(path);
    BIGPLAN_ASSIGN_OR_RETURN(index, ReadIndexFile(path));
    have_index = true;
  }

  // The tensor each shard is first named for, for error messages.
  std::map<std::string, std::string> first_tensor_of_shard;
  if (have_index) {
    for (const auto& [tensor, file] : index) first_tensor_of_shard.emplace(file, tensor);
    for (const auto& [file, tensor] : first_tensor_of_shard) shard_names.push_back(file);  // sorted, unique
  }

  Checkpoint ckpt;
  ckpt.directory_ = directory;
  ckpt.index_path_ = index_path;
  Sha256 overall;
  std::map<std::string, uint32_t> found;  // tensor -> shard
  for (uint32_t s = 0; s < shard_names.size(); ++s) {
    const std::string& name = shard_names[s];
    std::string shard_path = JoinPath(directory, name);
    std::string raw;
    auto header = ReadSafetensorsHeader(shard_path, &raw);
    if (!header.ok()) {
      Error e = header.take_error();
      if (have_index && e.code == ErrorCode::kNotFound) {
        return MakeError(ErrorCode::kNotFound, index_path + ": shard " + Quote(name) + " (listed for tensor " +
                                                   Quote(first_tensor_of_shard[name]) + ") not found: " + e.message);
      }
      return e;
    }
    ckpt.shard_paths_.push_back(shard_path);
    ShardFingerprint fp;
    fp.file_name = name;
    fp.size_bytes = header->file_size;
    fp.header_digest = Sha256Hex(raw.data(), raw.size());
    overall.Update(fp.file_name + "\n" + std::to_string(fp.size_bytes) + "\n" + fp.header_digest + "\n");
    ckpt.fingerprint_.shards.push_back(std::move(fp));

    for (const TensorInfo& t : header->tensors) {
      auto [it, inserted] = found.emplace(t.name, s);
      if (!inserted) {
        return MakeError(ErrorCode::kMismatch, "tensor " + Quote(t.name) + " is in two shards: " +
                                                   ckpt.shard_paths_[it->second] + " and " + shard_path);
      }
      if (have_index) {
        auto listed = index.find(t.name);
        if (listed == index.end()) {
          return MakeError(ErrorCode::kMismatch, shard_path + ": holds tensor " + Quote(t.name) +
                                                     ", which the index " + index_path + " does not list");
        }
        if (listed->second != name) {
          return MakeError(ErrorCode::kMismatch, shard_path + ": holds tensor " + Quote(t.name) + ", which the index " +
                                                     index_path + " lists in " + Quote(listed->second));
        }
      }
      TensorLocation loc;
      loc.name = t.name;
      loc.shard = s;
      loc.dtype = t.dtype;
      loc.shape = t.shape;
      loc.offset = t.offset;
      loc.size_bytes = t.size_bytes;
      ckpt.tensors_.push_back(std::move(loc));
    }
  }
  ckpt.fingerprint_.digest = overall.HexDigest();

  if (have_index) {
    for (const auto& [tensor, file] : index) {
      if (found.find(tensor) == found.end()) {
        return MakeError(ErrorCode::kNotFound, index_path + ": tensor " + Quote(tensor) + " is listed in shard " +
                                                   Quote(file) + " but absent from " + JoinPath(directory, file));
      }
    }
  }

  std::sort(ckpt.tensors_.begin(), ckpt.tensors_.end(),
            [](const TensorLocation& a, const TensorLocation& b) { return a.name < b.name; });
  for (size_t i = 0; i < ckpt.tensors_.size(); ++i) ckpt.by_name_.emplace(ckpt.tensors_[i].name, i);
  return ckpt;
}

}  // namespace bigplan

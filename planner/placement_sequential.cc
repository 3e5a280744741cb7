// The "sequential" strategy: Accelerate 1.15's infer_auto_device_map, replayed over the module tree that the
// description's block names imply (accelerate/utils/modeling.py; clean_result and fallback_allocation as their
// defaults, offload_buffers=False).
//
// The tree: the root's children are the first name components of the blocks ("model", "lm_head"), and so on down to
// the blocks, which are atomic (a decoder layer is a no-split class; embeddings, norms and the lm_head are leaf
// modules). Children keep the order of their first block, which is the module registration order for the supported
// architectures. Parameter-free modules (rotary_emb, dropout) are not in the tree: they never change a decision.
//
// Sizes are Accelerate's compute_module_sizes with dtype = the execution dtype: numel x the execution dtype's size
// for floating params (the model is instantiated in that dtype, as from_pretrained(dtype=...) does), and numel x
// min(exec, own) dtype size for runtime buffers (e.g. GPT-J's fp32 attn.embed_positions); no alignment. A tied param
// is counted once, under its owner (named_parameters() drops the duplicate), and tied groups are the owner param and
// its alias in the reading block (e.g. ["transformer.wte.weight", "lm_head.weight"]).
#include <algorithm>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "planner/placement.h"
#include "planner/placement_strategies.h"

namespace bigplan {
namespace {

struct Node {
  std::string name;
  int block = -1;  // index into model.blocks for a block node
  std::vector<Node*> children;
  bool splittable() const { return block < 0 && !children.empty(); }
};

struct Tree {
  std::vector<std::unique_ptr<Node>> nodes;
  Node* root = nullptr;
  Node* Make(const std::string& name) {
    nodes.push_back(std::make_unique<Node>());
    nodes.back()->name = name;
    return nodes.back().get();
  }
};

Result<Tree> BuildTree(const ModelDescription& model) {
  Tree t;
  t.root = t.Make("");
  std::unordered_map<std::string, Node*> by_name;
  by_name[""] = t.root;
  for (size_t i = 0; i < model.blocks.size(); ++i) {
    const std::string& name = model.blocks[i].name;
    Node* parent = t.root;
    size_t pos = 0;
    while (true) {
      size_t dot = name.find('.', pos);
      std::string prefix = dot == std::string::npos ? name : name.substr(0, dot);
      auto it = by_name.find(prefix);
      Node* node;
      if (it == by_name.end()) {
        node = t.Make(prefix);
        by_name[prefix] = node;
        parent->children.push_back(node);
      } else {
        node = it->second;
      }
      if (node->block >= 0) {
        return MakeError(ErrorCode::kUnsupported, "sequential placement: block \"" + name + "\" is nested inside block \"" +
                                                      node->name + "\"");
      }
      if (dot == std::string::npos) {
        if (!node->children.empty()) {
          return MakeError(ErrorCode::kUnsupported, "sequential placement: block \"" + name + "\" contains other blocks");
        }
        node->block = static_cast<int>(i);
        break;
      }
      parent = node;
      pos = dot + 1;
    }
  }
  return t;
}

using Entry = std::pair<std::string, Node*>;

// Python's `a in b` for strings.
bool Contains(const std::string& haystack, const std::string& needle) { return haystack.find(needle) != std::string::npos; }

class AccelerateSim {
 public:
  AccelerateSim(const ModelDescription& model, DType exec) {
    block_size_.resize(model.blocks.size());
    for (size_t i = 0; i < model.blocks.size(); ++i) {
      const BlockDesc& b = model.blocks[i];
      int64_t s = 0;
      for (const TensorSpec& t : b.params) s += static_cast<int64_t>(t.bytes_as(exec));
      for (const TensorSpec& t : b.runtime_buffers) {
        if (IsFloatingPoint(t.dtype)) {
          s += t.numel() * static_cast<int64_t>(std::min(DTypeBytes(exec), DTypeBytes(t.dtype)));
        } else {
          s += static_cast<int64_t>(t.bytes());
        }
      }
      block_size_[i] = s;
    }
    // Tied groups, with module-path names: owner block name + local param name, and the reader's alias.
    for (size_t i = 0; i < model.blocks.size(); ++i) {
      const BlockDesc& reader = model.blocks[i];
      for (const std::string& tied : reader.tied) {
        int owner = -1;
        const TensorSpec* p = model.FindParam(tied, &owner);
        if (p == nullptr) continue;
        const BlockDesc& ob = model.blocks[owner];
        const std::string local = tied.substr(ob.prefix.size());
        const std::string owner_path = ob.name + "." + local;
        const size_t dot = local.rfind('.');
        const std::string alias = reader.name + "." + (dot == std::string::npos ? local : local.substr(dot + 1));
        param_size_[owner_path] = static_cast<int64_t>(p->bytes_as(exec));
        param_size_[alias] = 0;
        tied_groups_.push_back({std::min(owner_path, alias), std::max(owner_path, alias)});
      }
    }
  }

  int64_t Size(const std::string& name) {
    auto it = sizes_.find(name);
    if (it != sizes_.end()) return it->second;
    auto p = param_size_.find(name);
    return p == param_size_.end() ? 0 : p->second;
  }

  void ComputeSizes(const Node* n) {
    int64_t s = 0;
    if (n->block >= 0) s = block_size_[n->block];
    for (const Node* c : n->children) {
      ComputeSizes(c);
      s += sizes_[c->name];
    }
    sizes_[n->name] = s;
  }

  // get_max_layer_size
  std::pair<int64_t, std::vector<std::string>> MaxLayer(const std::vector<Entry>& modules) {
    int64_t max_size = 0;
    std::vector<std::string> names;
    // Depth-first in list order: a splittable module's children replace it at the front.
    std::vector<Entry> stack(modules.rbegin(), modules.rend());
    while (!stack.empty()) {
      Entry e = stack.back();
      stack.pop_back();
      if (!e.second->splittable()) {
        const int64_t size = Size(e.first);
        if (size > max_size) {
          max_size = size;
          names = {e.first};
        } else if (size == max_size) {
          names.push_back(e.first);
        }
      } else {
        for (auto it = e.second->children.rbegin(); it != e.second->children.rend(); ++it) stack.push_back({(*it)->name, *it});
      }
    }
    return {max_size, names};
  }

  std::vector<Entry> Children(const Node* n) {
    std::vector<Entry> out;
    for (Node* c : n->children) out.push_back({c->name, c});
    return out;
  }

  // Returns module name -> device ("0", "1", ..., "cpu", "disk"), in assignment order.
  Result<std::vector<std::pair<std::string, std::string>>> Run(const Tree& tree, const MemoryBudget& budget) {
    ComputeSizes(tree.root);
    std::vector<std::string> devices;
    std::map<std::string, int64_t> max_memory;
    for (const auto& [ordinal, bytes] : budget.gpus) {
      devices.push_back(std::to_string(ordinal));
      max_memory[devices.back()] = static_cast<int64_t>(std::min<uint64_t>(bytes, INT64_MAX / 4));
    }
    const bool has_gpu = !devices.empty();
    if (budget.cpu) {
      devices.push_back("cpu");
      max_memory["cpu"] = static_cast<int64_t>(std::min<uint64_t>(*budget.cpu, INT64_MAX / 4));
    }
    devices.push_back("disk");
    std::vector<std::string> main_devices = has_gpu ? std::vector<std::string>{devices[0], "cpu"} : std::vector<std::string>{"cpu"};
    auto is_main = [&](const std::string& d) { return std::find(main_devices.begin(), main_devices.end(), d) != main_devices.end(); };

    std::vector<std::pair<std::string, std::string>> device_map;
    size_t current = 0;
    std::map<std::string, int64_t> used;
    std::vector<Entry> todo = Children(tree.root);
    auto [max_layer_size, max_layer_names] = MaxLayer(todo);

    while (!todo.empty()) {
      Entry entry = todo.front();
      todo.erase(todo.begin());
      const std::string& name = entry.first;
      {
        std::vector<std::string> kept;
        for (const std::string& n : max_layer_names) {
          if (n != name && n.rfind(name + ".", 0) != 0) kept.push_back(n);
        }
        max_layer_names = std::move(kept);
        if (max_layer_names.empty()) std::tie(max_layer_size, max_layer_names) = MaxLayer(todo);
      }
      const int64_t module_size = Size(name);
      // Tied params relevant here: one side inside this module, one outside.
      std::vector<std::string> tied_params;
      for (const auto& group : tied_groups_) {
        bool any = false, all = true;
        for (const std::string& k : group) {
          const bool in = Contains(k + ".", name + ".");
          any = any || in;
          all = all && in;
        }
        if (!any || all) continue;
        for (const std::string& p : group) {
          if (!Contains(p + ".", name + ".")) tied_params.push_back(p);
        }
      }
      const std::string& device = devices[current];
      const bool unlimited = device == "disk";
      int64_t current_max_size = unlimited ? 0 : max_memory[device];
      int64_t reserved = 0;
      if (is_main(device)) {
        current_max_size -= max_layer_size;
        reserved = max_layer_size;
      }
      // get_module_size_with_ties
      int64_t with_ties = module_size;
      std::vector<Entry> tied_modules;
      for (const std::string& tp : tied_params) {
        auto it = std::find_if(todo.begin(), todo.end(), [&](const Entry& e) { return tp.rfind(e.first + ".", 0) == 0; });
        if (it == todo.end()) {
          return MakeError(ErrorCode::kUnsupported, "sequential placement: the module holding tied param \"" + tp +
                                                        "\" was placed before the module owning its pair (" + name +
                                                        "); Accelerate cannot place this model either");
        }
        tied_modules.push_back(*it);
        with_ties += Size(it->first) - Size(tp);
      }

      if (unlimited || used[device] + with_ties <= current_max_size) {
        used[device] += with_ties;
        device_map.push_back({name, device});
        for (const Entry& t : tied_modules) {
          auto it = std::find_if(todo.begin(), todo.end(), [&](const Entry& e) { return e.first == t.first; });
          if (it != todo.end()) todo.erase(it);
          device_map.push_back({t.first, device});
        }
        continue;
      }

      if (!tied_params.empty() && used[device] + module_size <= current_max_size) {
        bool split = false;
        for (const Entry& t : tied_modules) {
          if (!t.second->splittable()) continue;
          auto it = std::find_if(todo.begin(), todo.end(), [&](const Entry& e) { return e.first == t.first; });
          std::vector<Entry> next;
          next.push_back(entry);
          next.insert(next.end(), todo.begin(), it);
          for (const Entry& c : Children(t.second)) next.push_back(c);
          if (it != todo.end()) next.insert(next.end(), it + 1, todo.end());
          todo = std::move(next);
          std::tie(max_layer_size, max_layer_names) = MaxLayer(todo);
          split = true;
          break;
        }
        if (split) continue;
      }

      if (used[device] + module_size >= current_max_size && entry.second->splittable()) {
        std::vector<Entry> next = Children(entry.second);
        next.insert(next.end(), todo.begin(), todo.end());
        todo = std::move(next);
        std::tie(max_layer_size, max_layer_names) = MaxLayer(todo);
        continue;
      }

      // Next device.
      used[device] += reserved;
      ++current;
      if (current >= devices.size()) return MakeError(ErrorCode::kInternal, "sequential placement ran out of devices");
      todo.insert(todo.begin(), entry);
    }
    return device_map;
  }

 private:
  std::vector<int64_t> block_size_;
  std::unordered_map<std::string, int64_t> sizes_;
  std::unordered_map<std::string, int64_t> param_size_;
  std::vector<std::vector<std::string>> tied_groups_;
};

class SequentialStrategy : public PlacementStrategy {
 public:
  std::string name() const override { return "sequential"; }
  std::string description() const override {
    return "Accelerate's infer_auto_device_map: fill GPU 0..N in order, then cpu, then disk";
  }
  Result<Placement> Place(const PlacementRequest& request) const override {
    BIGPLAN_RETURN_IF_ERROR(placement_internal::CheckRequest(request));
    const ModelDescription& model = *request.model;
    BIGPLAN_ASSIGN_OR_RETURN(Tree tree, BuildTree(model));
    AccelerateSim sim(model, request.exec_dtype);
    BIGPLAN_ASSIGN_OR_RETURN(auto modules, sim.Run(tree, request.budget));
    nlohmann::json device_map = nlohmann::json::object();
    for (const auto& [module, device] : modules) {
      if (device == "cpu" || device == "disk") {
        device_map[module] = device;
      } else {
        device_map[module] = std::stoi(device);
      }
    }
    BIGPLAN_ASSIGN_OR_RETURN(std::vector<BlockPlacement> blocks, DeviceMapToPlacement(model, device_map, request.budget));
    return FinishPlacement(request, name(), std::move(blocks));
  }
};

}  // namespace

namespace placement_internal {
std::unique_ptr<PlacementStrategy> MakeSequentialStrategy() { return std::make_unique<SequentialStrategy>(); }
}  // namespace placement_internal

}  // namespace bigplan

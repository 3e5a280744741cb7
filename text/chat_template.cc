#include "text/chat_template.h"

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

namespace bigplan::text {
namespace {

bool ReadFile(const std::string& path, std::string* out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  std::stringstream ss;
  ss << in.rdbuf();
  *out = ss.str();
  return true;
}

}  // namespace

Result<ChatTemplate> ChatTemplate::FromString(const std::string& source, const jinja::Value& special_tokens,
                                              const std::string& name) {
  auto t = jinja::Template::Parse(source);
  if (!t.ok()) return MakeError(ErrorCode::kInvalidArgument, name + ": " + t.error().message);
  return ChatTemplate(std::move(t).value(), source, special_tokens, name);
}

Result<ChatTemplate> ChatTemplate::Load(const std::string& dir) {
  std::string config_text, source, name;
  nlohmann::json config;
  const std::string config_path = dir + "/tokenizer_config.json";
  if (ReadFile(config_path, &config_text)) {
    config = nlohmann::json::parse(config_text, nullptr, false);
    if (config.is_discarded() || !config.is_object()) {
      return MakeError(ErrorCode::kCorrupt, config_path + ": not a JSON object");
    }
  }
  if (ReadFile(dir + "/chat_template.jinja", &source)) {
    name = dir + "/chat_template.jinja";
  } else if (config.is_object() && config.contains("chat_template")) {
    name = config_path + " (chat_template)";
    const nlohmann::json& ct = config["chat_template"];
    if (ct.is_string()) {
      source = ct.get<std::string>();
    } else if (ct.is_array()) {
      for (const auto& e : ct) {
        if (e.is_object() && e.value("name", "") == "default" && e.contains("template") && e["template"].is_string()) {
          source = e["template"].get<std::string>();
        }
      }
      if (source.empty()) return MakeError(ErrorCode::kCorrupt, name + ": no template named \"default\"");
    } else {
      return MakeError(ErrorCode::kCorrupt, name + ": expected a string or a list of {name, template}");
    }
  } else {
    return MakeError(ErrorCode::kNotFound, dir +
                                               ": no chat template (no chat_template.jinja, no chat_template in "
                                               "tokenizer_config.json)");
  }
  jinja::Value special = jinja::Value::MakeDict();
  if (config.is_object()) {
    for (const char* key :
         {"bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"}) {
      if (!config.contains(key)) continue;
      const nlohmann::json& v = config[key];
      if (v.is_string())
        special.Set(key, jinja::Value::Str(v.get<std::string>()));
      else if (v.is_object() && v.contains("content") && v["content"].is_string()) {
        special.Set(key, jinja::Value::Str(v["content"].get<std::string>()));
      }
    }
  }
  return FromString(source, special, name);
}

Result<std::string> ChatTemplate::Apply(const jinja::Value& messages, bool add_generation_prompt,
                                        const jinja::Value& tools) const {
  if (messages.kind != jinja::Value::Kind::kList) {
    return MakeError(ErrorCode::kInvalidArgument, "messages must be a list");
  }
  jinja::Value ctx = jinja::Value::MakeDict();
  for (const auto& [k, v] : *special_.dict) ctx.Set(k, v);
  ctx.Set("messages", messages);
  ctx.Set("tools", tools);
  ctx.Set("documents", jinja::Value::None());
  ctx.Set("add_generation_prompt", jinja::Value::Bool(add_generation_prompt));
  auto r = template_.Render(ctx);
  if (!r.ok()) return MakeError(ErrorCode::kInvalidArgument, name_ + ": " + r.error().message);
  return r;
}

Result<std::string> ChatTemplate::ApplyJson(const std::string& messages_json, bool add_generation_prompt,
                                            const std::string& tools_json) const {
  auto m = jinja::Value::FromJson(messages_json);
  if (!m.ok()) return MakeError(ErrorCode::kInvalidArgument, "messages: not valid JSON");
  jinja::Value tools = jinja::Value::None();
  if (!tools_json.empty()) {
    auto t = jinja::Value::FromJson(tools_json);
    if (!t.ok()) return MakeError(ErrorCode::kInvalidArgument, "tools: not valid JSON");
    tools = *t;
  }
  return Apply(*m, add_generation_prompt, tools);
}

}  // namespace bigplan::text

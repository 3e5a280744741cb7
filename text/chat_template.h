// Chat templates: a model's Jinja template rendered as transformers' apply_chat_template(messages,
// add_generation_prompt=...) renders it (text/jinja.h), with the same variables: messages, tools, documents,
// add_generation_prompt and the tokenizer's named special tokens (bos_token, eos_token, unk_token, pad_token, ...).
#pragma once

#include <string>

#include "support/result.h"
#include "text/jinja.h"

namespace bigplan::text {

class ChatTemplate {
 public:
  // The template of the model directory `dir`: chat_template.jinja, else tokenizer_config.json's "chat_template"
  // (a string, or a list of {"name", "template"} of which "default" is used); the special tokens from
  // tokenizer_config.json. kNotFound when the directory has no chat template (named); kInvalidArgument when the
  // template does not parse (with the file and line).
  static Result<ChatTemplate> Load(const std::string& dir);
  // A template given as text, with the special tokens as a dict of strings ({"bos_token": "<s>", ...}).
  static Result<ChatTemplate> FromString(const std::string& source, const jinja::Value& special_tokens,
                                         const std::string& name = "chat template");

  // Renders `messages` (a list of {"role": ..., "content": ...} dicts; other fields are passed through). `tools`
  // is None (the default) or a list of JSON schemas. kInvalidArgument with the template's message when it raises
  // (e.g. roles that do not alternate) or fails.
  Result<std::string> Apply(const jinja::Value& messages, bool add_generation_prompt,
                            const jinja::Value& tools = jinja::Value::None()) const;
  // The same with the messages (and tools) as JSON text.
  Result<std::string> ApplyJson(const std::string& messages_json, bool add_generation_prompt,
                                const std::string& tools_json = "") const;

  const std::string& source() const { return source_; }

 private:
  ChatTemplate(jinja::Template t, std::string source, jinja::Value special, std::string name)
      : template_(std::move(t)), source_(std::move(source)), special_(std::move(special)), name_(std::move(name)) {}
  jinja::Template template_;
  std::string source_;
  jinja::Value special_;
  std::string name_;
};

}  // namespace bigplan::text

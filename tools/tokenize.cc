// tokenize: text -> token ids, or ids -> text, with a model's own tokenizer (tokenizer.json or tokenizer.model).
//
//   echo "Hello world" | tokenize --model DIR            -> "9906 1917"
//   echo "9906 1917" | tokenize --model DIR --decode     -> "Hello world"

#include <cstdio>
#include <iostream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

#include "support/cli.h"
#include "support/result.h"
#include "support/tool_main.h"
#include "text/tokenizer.h"

namespace bigplan {
namespace {

constexpr const char* kUsage =
    "usage: tokenize --model DIR [--decode] [FLAGS] < input\n"
    "\n"
    "Encodes the text on stdin (all of it, as one text) with the model's tokenizer and prints the token ids,\n"
    "space-separated, on one line. With --decode, reads ids (separated by spaces, commas or newlines) and prints\n"
    "their text. DIR holds tokenizer.json, or tokenizer.model (SentencePiece); nothing else is needed.\n"
    "\n"
    "  --model DIR              the model (or tokenizer) directory, or the tokenizer file itself\n"
    "  --decode                 ids -> text\n"
    "  --no-special-tokens      encode: do not add the post-processor's tokens (e.g. BOS)\n"
    "  --skip-special-tokens    decode: leave special tokens (e.g. <|im_end|>) out of the text\n"
    "  -h, --help               this text\n"
    "\n"
    "Exit status: 0 ok, 1 the request failed, 2 bad command line.\n";

constexpr Cli kCli(kUsage);

Status Main(int argc, char** argv) {
  std::string model;
  bool decode = false, add_special = true, skip_special = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "-h" || arg == "--help") {
      std::fputs(kUsage, stdout);
      return Status::Ok();
    }
    if (arg == "--decode") {
      decode = true;
      continue;
    }
    if (arg == "--no-special-tokens") {
      add_special = false;
      continue;
    }
    if (arg == "--skip-special-tokens") {
      skip_special = true;
      continue;
    }
    std::string flag, value;
    switch (SplitFlag(argc, argv, &i, {"--model"}, &flag, &value)) {
      case FlagSplit::kOk:
        break;
      case FlagSplit::kUnknown:
        return kCli.Usage("unknown flag " + arg);
      case FlagSplit::kMissingValue:
        return kCli.Usage(flag + " needs a value");
    }
    if (flag == "--model")
      model = UserPath(value);
    else
      return kCli.Usage("unknown flag " + flag);
  }
  if (model.empty()) return kCli.Usage("--model is required");
  BIGPLAN_ASSIGN_OR_RETURN(std::unique_ptr<text::Tokenizer> tok, text::Tokenizer::Load(model));
  std::string input((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
  if (decode) {
    for (char& c : input) {
      if (c == ',' || c == '\n' || c == '\t' || c == '\r') c = ' ';
    }
    std::stringstream ss(input);
    std::vector<int64_t> ids;
    std::string word;
    while (ss >> word) {
      BIGPLAN_ASSIGN_OR_RETURN(int64_t id, kCli.ParseInt("token id", word, 0));
      if (!tok->IdToToken(id)) {
        return MakeError(ErrorCode::kInvalidArgument, "token id " + word + " is not in the vocabulary (" +
                                                          std::to_string(tok->vocab_size()) + " ids)");
      }
      ids.push_back(id);
    }
    const std::string text = tok->Decode(ids, skip_special);
    std::fwrite(text.data(), 1, text.size(), stdout);
    return Status::Ok();
  }
  auto ids = tok->Encode(input, add_special);
  if (!ids.ok()) return WithContext(ids.take_error(), "stdin");
  std::string out;
  for (size_t i = 0; i < ids->size(); ++i) out += (i ? " " : "") + std::to_string((*ids)[i]);
  out += "\n";
  std::fwrite(out.data(), 1, out.size(), stdout);
  return Status::Ok();
}

}  // namespace
}  // namespace bigplan

int main(int argc, char** argv) {
  return bigplan::RunTool("tokenize", [&] { return bigplan::Main(argc, argv); });
}

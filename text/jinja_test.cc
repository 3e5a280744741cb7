#include "text/jinja.h"

#include <gtest/gtest.h>

#include "text/chat_template.h"

namespace bigplan::text::jinja {
namespace {

std::string Render(const std::string& src, const std::string& ctx_json = "{}") {
  auto t = Template::Parse(src);
  EXPECT_TRUE(t.ok()) << t.error().ToString();
  if (!t.ok()) return "";
  auto ctx = Value::FromJson(ctx_json);
  auto r = t->Render(*ctx);
  EXPECT_TRUE(r.ok()) << r.error().ToString();
  return r.ok() ? *r : "";
}

TEST(Jinja, ExpressionsAndFilters) {
  EXPECT_EQ(Render("{{ 'a' + x | trim + 'b' }}", R"({"x": "  y  "})"), "ayb");
  EXPECT_EQ(Render("{{ xs | map(attribute='n') | join('-') }}", R"({"xs": [{"n": 1}, {"n": 2}]})"), "1-2");
  EXPECT_EQ(Render("{{ d.k }}{{ d['k'] }}{{ d.missing }}", R"({"d": {"k": "v"}})"), "vv");
  EXPECT_EQ(Render("{{ [1, 2, 3][-1] }} {{ 'abc'[::-1] }} {{ 10 // 3 }} {{ 10 % 3 }}"), "3 cba 3 1");
  EXPECT_EQ(Render("{{ none }} {{ true }} {{ 2.0 }} {{ ['a'] }}"), "None True 2.0 ['a']");
}

TEST(Jinja, WhitespaceControlTrimAndLstripBlocks) {
  EXPECT_EQ(Render("a\n  {% if true %}\n  b\n  {% endif %}\nc"), "a\n  b\nc");
  EXPECT_EQ(Render("a  {%- if true -%}  b  {%- endif %}"), "ab");
}

TEST(Jinja, LoopsScopesAndNamespaces) {
  EXPECT_EQ(Render("{% set x = 1 %}{% for i in [1, 2] %}{% set x = i %}{% endfor %}{{ x }}"), "1");
  EXPECT_EQ(Render("{% set ns = namespace(x=1) %}{% for i in [1, 2] %}{% set ns.x = i %}{% endfor %}{{ ns.x }}"), "2");
  EXPECT_EQ(Render("{% for i in [] %}x{% else %}empty{% endfor %}"), "empty");
  EXPECT_EQ(Render("{% for i in [1, 2, 3] %}{{ loop.index }}{{ ',' if not loop.last }}{% endfor %}"), "1,2,3");
}

TEST(Jinja, ParseErrorsNameTheLine) {
  auto t = Template::Parse("ok\n{% if x %}\nno end");
  ASSERT_FALSE(t.ok());
  EXPECT_NE(t.error().message.find("endif"), std::string::npos);
  t = Template::Parse("line1\n{{ 1 + }}");
  ASSERT_FALSE(t.ok());
  EXPECT_NE(t.error().message.find("line 2"), std::string::npos) << t.error().message;
  t = Template::Parse("{% frobnicate %}");
  ASSERT_FALSE(t.ok());
  EXPECT_NE(t.error().message.find("frobnicate"), std::string::npos);
}

TEST(Jinja, RaiseExceptionIsAnError) {
  auto t = Template::Parse("{{ raise_exception('roles must alternate') }}");
  ASSERT_TRUE(t.ok());
  auto r = t->Render(Value::MakeDict());
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("roles must alternate"), std::string::npos);
}

TEST(ChatTemplate, RendersWithSpecialTokens) {
  Value special = Value::MakeDict();
  special.Set("bos_token", Value::Str("<s>"));
  auto ct = ChatTemplate::FromString(
      "{{ bos_token }}{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}"
      "{% if add_generation_prompt %}[assistant]{% endif %}",
      special);
  ASSERT_TRUE(ct.ok()) << ct.error().ToString();
  auto out = ct->ApplyJson(R"([{"role": "user", "content": "hi"}])", true);
  ASSERT_TRUE(out.ok()) << out.error().ToString();
  EXPECT_EQ(*out, "<s>[user]hi[assistant]");
  EXPECT_FALSE(ct->ApplyJson("not json", true).ok());
  EXPECT_FALSE(ChatTemplate::Load("/nonexistent").ok());
}

}  // namespace
}  // namespace bigplan::text::jinja

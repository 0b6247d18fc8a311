// One table per options struct: each field's name, type and default, read from a default-
// constructed struct, whose initialisers (TORCH_ARG(...) = value, and the constants of
// arwrap/defaults.h they share) are the one place a default is written. Python's defaults
// (_C.wrapper_fields(), _C.autoregressive_loss_fields(), _C.generate_fields(),
// _C.beam_search_fields(); arwrap_cpp/options.py), the bindings' keyword defaults and the
// operator schemas' defaults are read from there. The net's configuration has its own table
// (config_fields(), transformer_options.h).
#pragma once

#include <cstdint>
#include <cstdio>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace arwrap {

struct OptionField {
  std::string name;
  std::string type;           // as in an operator schema: "int", "float", "bool", "str", "int?"
  std::string default_value;  // a literal both a schema and Python read: 0, 0.05, True, None, "top_k"
};

// A default as that literal.
inline std::string option_literal(bool v) { return v ? "True" : "False"; }
inline std::string option_literal(int64_t v) { return std::to_string(v); }
inline std::string option_literal(double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.17g", v);
  std::string s = buf;
  if (s.find_first_of(".eni") == std::string::npos) s += ".0";  // 50 -> 50.0: a float literal
  return s;
}
inline std::string option_literal(const std::string& v) { return "\"" + v + "\""; }
inline std::string option_literal(const std::optional<int64_t>& v) { return v ? option_literal(*v) : "None"; }

// "type name=default, ..." of the fields named, in that order, for an operator schema.
inline std::string schema_arguments(const std::vector<OptionField>& table, const std::vector<std::string>& names) {
  std::string out;
  for (const auto& name : names) {
    const OptionField* found = nullptr;
    for (const auto& f : table) found = f.name == name ? &f : found;
    if (found == nullptr) throw std::logic_error("schema_arguments: no option field " + name);
    out += (out.empty() ? "" : ", ") + found->type + " " + name + "=" + found->default_value;
  }
  return out;
}

}  // namespace arwrap

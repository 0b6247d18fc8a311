#include "checkpoint.h"

#include <ATen/core/Dict.h>
#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <caffe2/serialize/inline_container.h>
#include <torch/csrc/jit/serialization/export.h>
#include <torch/csrc/jit/serialization/pickler.h>
#include <torch/serialize.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <unistd.h>

namespace train {

namespace {

std::string first_line(const std::string& s) {
  const auto n = s.find('\n');
  return n == std::string::npos ? s : s.substr(0, n);
}

// the first line, without miniz's advice paragraph
std::string c10_message(const c10::Error& e) {
  std::string m = first_line(e.what_without_backtrace());
  if (const auto cut = m.find(" This is an internal miniz error."); cut != std::string::npos) m.resize(cut);
  return m;
}

c10::Dict<std::string, at::Tensor> to_dict(const std::map<std::string, at::Tensor>& m) {
  c10::Dict<std::string, at::Tensor> d;
  for (const auto& [k, v] : m) d.insert(k, v.detach().contiguous().cpu());
  return d;
}

template <typename State>
State* adam_state(torch::optim::Optimizer& opt, const at::Tensor& p) {
  auto& states = opt.state();
  auto it = states.find(p.unsafeGetTensorImpl());
  if (it == states.end()) return nullptr;
  return dynamic_cast<State*>(it->second.get());
}

template <typename State>
std::map<std::string, at::Tensor> save_moments(torch::optim::Optimizer& opt,
                                               const torch::OrderedDict<std::string, at::Tensor>& params) {
  std::map<std::string, at::Tensor> out;
  for (const auto& item : params) {
    State* s = adam_state<State>(opt, item.value());
    if (!s) continue;  // no step taken yet
    out[item.key() + ".exp_avg"] = s->exp_avg();
    out[item.key() + ".exp_avg_sq"] = s->exp_avg_sq();
    out[item.key() + ".step"] = at::scalar_tensor(static_cast<double>(s->step()), at::kFloat);
  }
  return out;
}

template <typename State>
void load_moments(torch::optim::Optimizer& opt, const torch::OrderedDict<std::string, at::Tensor>& params,
                  const std::map<std::string, at::Tensor>& state, const std::string& what) {
  auto get = [&](const std::string& key, const at::Tensor& like) -> at::Tensor {
    auto it = state.find(key);
    if (it == state.end()) throw std::runtime_error(what + ": optimizer state lacks " + key);
    if (like.defined() && it->second.sizes() != like.sizes())
      throw std::runtime_error(what + ": optimizer state " + key + " has shape " + c10::str(it->second.sizes()) +
                               ", the parameter " + c10::str(like.sizes()));
    return it->second;
  };
  for (const auto& item : params) {
    const at::Tensor& p = item.value();
    if (!state.count(item.key() + ".exp_avg")) continue;  // parameter without state (never stepped)
    auto s = std::make_unique<State>();
    s->exp_avg(get(item.key() + ".exp_avg", p).to(p.options()).clone());
    s->exp_avg_sq(get(item.key() + ".exp_avg_sq", p).to(p.options()).clone());
    const at::Tensor step = get(item.key() + ".step", at::Tensor());
    if (step.numel() != 1) throw std::runtime_error(what + ": optimizer state " + item.key() + ".step is not a scalar");
    s->step(static_cast<int64_t>(step.item<double>()));
    opt.state()[p.unsafeGetTensorImpl()] = std::move(s);
  }
}

// torch::pickle_save, except that dicts are written without TorchScript's type tags
// (torch.jit._pickle.restore_type_tag), which Python's torch.load refuses under its
// default weights_only=True. Same zip layout as torch.save: data.pkl + data/<i>.
std::vector<char> pickle_save_untagged(const c10::IValue& value) {
  std::vector<char> pickle;
  torch::jit::Pickler pickler([&](const char* buf, size_t size) { pickle.insert(pickle.end(), buf, buf + size); },
                              /*tensor_table=*/nullptr, /*type_renamer=*/nullptr, /*memoized_class_types=*/nullptr,
                              /*get_tensor_id=*/nullptr, /*tag_aggregates=*/false);
  pickler.protocol();
  pickler.pushIValue(value);
  pickler.stop();
  std::vector<char> out;
  caffe2::serialize::PyTorchStreamWriter writer([&](const void* data, size_t len) {
    const char* bytes = static_cast<const char*>(data);
    out.insert(out.end(), bytes, bytes + len);
    return len;
  });
  torch::jit::writeArchiveAndTensors("data", pickle.data(), pickle.size(), pickler.tensorData(), writer);
  writer.writeEndOfFile();
  return out;
}

}  // namespace

void save_checkpoint(const std::string& path, const Checkpoint& ckpt) {
  c10::impl::GenericDict d(c10::StringType::get(), c10::AnyType::get());
  d.insert(std::string("format"), std::string(kCheckpointFormat));
  d.insert(std::string("config"), ckpt.config);
  d.insert(std::string("step"), ckpt.step);
  d.insert(std::string("seed"), ckpt.seed);
  d.insert(std::string("model"), to_dict(ckpt.model));
  d.insert(std::string("optimizer_name"), ckpt.optimizer_name);
  d.insert(std::string("optimizer"), to_dict(ckpt.optimizer));
  d.insert(std::string("train_args"), ckpt.train_args);
  const std::vector<char> bytes = pickle_save_untagged(c10::IValue(d));

  const std::filesystem::path target(path);
  if (target.has_parent_path()) {
    std::error_code ec;
    std::filesystem::create_directories(target.parent_path(), ec);
  }
  const std::string tmp = path + ".tmp" + std::to_string(::getpid());
  {
    std::FILE* f = std::fopen(tmp.c_str(), "wb");
    if (!f) throw std::runtime_error("cannot write checkpoint " + tmp);
    const bool ok = std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size() && std::fflush(f) == 0 &&
                    ::fsync(::fileno(f)) == 0;
    if (std::fclose(f) != 0 || !ok) {
      std::remove(tmp.c_str());
      throw std::runtime_error("cannot write checkpoint " + tmp + " (disk full?)");
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw std::runtime_error("cannot rename " + tmp + " to " + path);
  }
}

Checkpoint load_checkpoint(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) throw std::runtime_error("checkpoint " + path + " does not exist");
  std::ifstream in(path, std::ios::binary);
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (!in.eof() && in.fail()) throw std::runtime_error("cannot read checkpoint " + path);
  const std::string bad = "checkpoint " + path + " is not a readable arwrap checkpoint";
  c10::IValue v;
  try {
    v = torch::pickle_load(bytes);
  } catch (const c10::Error& e) {
    throw std::runtime_error(bad + " (truncated or corrupt?): " + c10_message(e));
  } catch (const std::exception& e) {
    throw std::runtime_error(bad + " (truncated or corrupt?): " + first_line(e.what()));
  }
  if (!v.isGenericDict()) throw std::runtime_error(bad + ": it holds a " + v.tagKind() + ", not a dict");
  const auto d = v.toGenericDict();
  auto field = [&](const char* key) -> c10::IValue {
    auto it = d.find(c10::IValue(std::string(key)));
    if (it == d.end()) throw std::runtime_error(bad + ": no '" + key + "' entry");
    return it->value();
  };
  try {
    const c10::IValue fmt = field("format");
    if (!fmt.isString() || fmt.toStringRef() != kCheckpointFormat)
      throw std::runtime_error(bad + ": format is " + (fmt.isString() ? "'" + fmt.toStringRef() + "'" : fmt.tagKind()) +
                               ", expected '" + kCheckpointFormat + "'");
    Checkpoint c;
    c.config = field("config").toStringRef();
    c.step = field("step").toInt();
    if (d.contains(c10::IValue(std::string("seed")))) c.seed = field("seed").toInt();
    auto tensors = [&](const char* key) {
      std::map<std::string, at::Tensor> m;
      for (const auto& e : field(key).toGenericDict()) m[e.key().toStringRef()] = e.value().toTensor();
      return m;
    };
    c.model = tensors("model");
    auto has = [&](const char* key) { return d.contains(c10::IValue(std::string(key))); };
    if (has("optimizer_name")) c.optimizer_name = field("optimizer_name").toStringRef();
    if (has("optimizer")) c.optimizer = tensors("optimizer");
    if (has("train_args")) c.train_args = field("train_args").toStringRef();
    if (c.step < 0) throw std::runtime_error(bad + ": negative step");
    for (const auto* m : {&c.model, &c.optimizer})
      for (const auto& [name, t] : *m)
        if (t.is_floating_point() && !t.isfinite().all().item<bool>())
          throw std::runtime_error("checkpoint " + path + ": " + name +
                                   " holds NaN or infinite values (a corrupt file, or a run that diverged)");
    return c;
  } catch (const c10::Error& e) {
    throw std::runtime_error(bad + ": an entry has the wrong type (" + c10_message(e) + ")");
  }
}

void load_state_dict(arwrap::TransformerWrapperImpl& net, const std::map<std::string, at::Tensor>& state,
                     const std::string& what) {
  try {
    net.load_state_dict(state);
  } catch (const c10::Error& e) {
    throw std::runtime_error(what + ": " + c10_message(e));
  }
}

std::map<std::string, at::Tensor> optimizer_state(torch::optim::Optimizer& opt, const std::string& name,
                                                  const torch::OrderedDict<std::string, at::Tensor>& params) {
  if (name == "adam") return save_moments<torch::optim::AdamParamState>(opt, params);
  if (name == "adamw") return save_moments<torch::optim::AdamWParamState>(opt, params);
  throw std::runtime_error("unknown optimizer " + name);
}

void load_optimizer_state(torch::optim::Optimizer& opt, const std::string& name,
                          const torch::OrderedDict<std::string, at::Tensor>& params,
                          const std::map<std::string, at::Tensor>& state, const std::string& what) {
  if (name == "adam") return load_moments<torch::optim::AdamParamState>(opt, params, state, what);
  if (name == "adamw") return load_moments<torch::optim::AdamWParamState>(opt, params, state, what);
  throw std::runtime_error("unknown optimizer " + name);
}

}  // namespace train

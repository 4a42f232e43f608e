// `npm run check`, last step: fails when a built or generated file is new to git (git diff
// does not see untracked files), naming it, so that every file the server embeds is committed.
import { execFileSync } from "node:child_process";

const paths = process.argv.slice(2);
const untracked = execFileSync("git", ["ls-files", "--others", "--exclude-standard", "--", ...paths], {
  encoding: "utf8",
}).trim();
if (untracked) {
  console.error(`not committed (run npm run build and commit them):\n${untracked}`);
  process.exit(1);
}

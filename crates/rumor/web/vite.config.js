// The page `rumor playground` serves. `npm run build` writes dist/, which is
// checked in and embedded in the binary (crates/rumor/src/playground/web.rs),
// so building rumor needs no Node.js. File names are fixed, not hashed: the
// binary serves exactly these three files.
import { defineConfig } from "vite";

export default defineConfig({
  base: "/",
  build: {
    outDir: "dist",
    emptyOutDir: true,
    assetsInlineLimit: 0,
    modulePreload: false,
    rolldownOptions: {
      output: {
        entryFileNames: "assets/app.js",
        chunkFileNames: "assets/app.js",
        assetFileNames: "assets/app[extname]",
      },
    },
  },
});

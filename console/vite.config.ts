import { defineConfig } from "vite";

// Served by the API gateway under /console/ (services/api/console.py); the built files are committed in dist/.
export default defineConfig({
  base: "/console/",
  build: { outDir: "dist", emptyOutDir: true, target: "es2022", sourcemap: false, reportCompressedSize: false },
});

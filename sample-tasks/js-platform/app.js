// A JavaScript task on the `wasmos:task` world, built with componentize-js against target/wit
// (`cargo xtask js-sample` builds it into sample-tasks/target/js/platform-js.wasm): it reads its
// context, reports progress and publishes a result.

import { get } from "wasmos:task/context@0.1.0";
import { report } from "wasmos:task/progress@0.1.0";
import { putFile, putValue } from "wasmos:task/results@0.1.0";

export const run = {
  run() {
    const me = get();
    console.log(`js task t-${me.taskId} role ${me.role} attempt ${me.attempt} job ${me.jobId}`);
    for (let i = 1; i <= 3; i++) {
      report(i / 3, `js step ${i} of 3`);
      console.log(`js step ${i} of 3`);
    }
    putValue("language", new TextEncoder().encode("javascript"));
    try {
      putValue("bad name!", new Uint8Array([1]));
    } catch (e) {
      console.log(`result refused: ${e.payload}`);
    }
    // A file result names an absolute path; a relative one is refused at once.
    try {
      putFile("notes", "notes.txt");
    } catch (e) {
      console.log(`file refused: ${e.payload}`);
    }
  },
};

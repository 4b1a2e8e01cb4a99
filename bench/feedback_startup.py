"""How long the labeling app takes to start: import + migrating a new SQLite database, in a fresh process
(the figure the feedback issue asks for: about a second), median of N runs. Run: python bench/feedback_startup.py"""

import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CODE = ("import sys, time; t = time.perf_counter(); import palate.feedback.app as a; a.create_app(sys.argv[1]); "
        "print(time.perf_counter() - t, 'torch' in sys.modules)")


def main(runs: int = 5) -> None:
    seconds = []
    with tempfile.TemporaryDirectory() as d:
        for i in range(runs):
            out = subprocess.run([sys.executable, "-c", CODE, str(Path(d) / f"s{i}.db")], capture_output=True,
                                 text=True, check=True).stdout.split()
            seconds.append(float(out[0]))
            assert out[1] == "False", "palate.feedback imported torch"
    print(f"palate.feedback start-up (import + new database migrated), {runs} fresh processes: "
          f"median {statistics.median(seconds):.2f} s, min {min(seconds):.2f} s, max {max(seconds):.2f} s")
    from record import write_result

    write_result("feedback_startup", {"runs": runs, "seconds": seconds, "median_s": statistics.median(seconds)},
                 metric="labeling app start-up (import + new database migrated), median", unit="s",
                 palate=statistics.median(seconds), higher_is_better=False, note=f"{runs} fresh processes")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)

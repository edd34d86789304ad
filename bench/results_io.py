"""Writing a benchmark's figures: bench/results/<name>.json, printed too."""
import json
import os
import platform
import time


def write_results(results: dict, out_dir: str, name: str) -> str:
    """Add the machine and date, write ``<out_dir>/<name>.json``, print it."""
    results = {**results,
               "machine": f"{platform.machine()}, {os.cpu_count()} cores",
               "date": time.strftime("%Y-%m-%d")}
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{name}.json")
    with open(path, "w") as file:
        json.dump(results, file, indent=2)
    print(json.dumps(results, indent=2))
    print(f"Written to {path}")
    return path

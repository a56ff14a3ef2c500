"""Compares Autobahn reports agent by agent: `compare.py INDEX_JSON DIRECT:THROUGH ...`.

Prints each agent's tally and every case whose result through weir differs from the direct
one's. A case that is OK one way and NON-STRICT the other differs only in timing (whether the
peer answered a valid message before failing on the bad frame after it) and is listed but
allowed; any other difference makes the exit status 1.
"""
import json
import sys
from collections import Counter

index = json.load(open(sys.argv[1]))
for agent, cases in sorted(index.items()):
    print(f"{agent:10} {len(cases):4} cases: behavior {dict(Counter(v['behavior'] for v in cases.values()))}, "
          f"close {dict(Counter(v['behaviorClose'] for v in cases.values()))}")
timing = {("OK", "NON-STRICT"), ("NON-STRICT", "OK")}
failed = False
for pair in sys.argv[2:]:
    direct, through = pair.split(":")
    a, b = index[direct], index[through]
    for case in sorted(a, key=lambda c: [int(x) for x in c.split(".")]):
        x, y = a[case], b.get(case)
        if y is None:
            print(f"  {case}: no result for {through}")
            failed = True
            continue
        if (x["behavior"], x["behaviorClose"]) == (y["behavior"], y["behaviorClose"]):
            continue
        allowed = x["behaviorClose"] == y["behaviorClose"] and (x["behavior"], y["behavior"]) in timing
        print(f"  {case}: {direct} {x['behavior']}/{x['behaviorClose']}, {through} {y['behavior']}/{y['behaviorClose']}"
              + ("  (timing only)" if allowed else "  DIFFERENT"))
        failed |= not allowed
sys.exit(1 if failed else 0)

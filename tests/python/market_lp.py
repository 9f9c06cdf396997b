"""The welfare-maximising price of a flexibility market, by linear programming (HiGHS via
SciPy), to compare with the price gridgate's iterative discovery finds (docs/market.md).

Reads JSON on stdin: {"buyers": [[value, wh], ...], "sellers": [[cost, wh], ...]} where a
buyer's block is bought below its value and a seller's block sold from its cost up (the
answers' step form). Maximises sum(value x) - sum(cost y) with every block between 0 and its
size and energy bought equal to energy sold. Prints JSON: the optimum welfare, the energy
traded, the dual price of the balance and the interval of prices that support the optimum
(every accepted buyer's value at or above, every accepted seller's cost at or below, every
rejected block on the other side).
"""

import json
import sys

import numpy as np
from scipy.optimize import linprog


def main() -> None:
    m = json.load(sys.stdin)
    buyers = m["buyers"]
    sellers = m["sellers"]
    nb, ns = len(buyers), len(sellers)
    # linprog minimises: -value for buyers, +cost for sellers.
    c = np.array([-v for v, _ in buyers] + [cst for cst, _ in sellers], dtype=float)
    bounds = [(0, w) for _, w in buyers] + [(0, w) for _, w in sellers]
    a_eq = np.array([[1.0] * nb + [-1.0] * ns])
    res = linprog(c, A_eq=a_eq, b_eq=[0.0], bounds=bounds, method="highs")
    if res.status != 0:
        print(json.dumps({"error": res.message}))
        sys.exit(1)
    x = res.x
    eps = 1e-6
    low, high = -np.inf, np.inf
    for i, (v, w) in enumerate(buyers):
        if x[i] > eps:
            high = min(high, v)  # accepted: the price is at most its value
        if x[i] < w - eps:
            low = max(low, v)  # not wholly accepted: the price is at least its value
    for j, (cst, w) in enumerate(sellers):
        y = x[nb + j]
        if y > eps:
            low = max(low, cst)
        if y < w - eps:
            high = min(high, cst)
    traded = float(sum(x[:nb]))
    print(
        json.dumps(
            {
                "welfare": -float(res.fun),
                "traded_wh": traded,
                "dual_price": float(-res.eqlin.marginals[0]),
                "low": None if low == -np.inf else float(low),
                "high": None if high == np.inf else float(high),
            }
        )
    )


if __name__ == "__main__":
    main()

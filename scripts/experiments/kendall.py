#!/usr/bin/env python3
"""Kendall's tau-b (ties corrected) between two paired lists of numbers, printed as one line.

    kendall.py X1,X2,... Y1,Y2,...        # or: kendall.py FILE (lines "x y", # comments)

Used by ablation.sh: x = one-shot scores in the supernet (cnas score), y = top-1 of the same
genotypes trained from scratch. Standard library only. tau-b = (C - D) / sqrt((n0 - n1)(n0 - n2))
with n0 = n(n-1)/2 pairs, C/D concordant/discordant pairs, n1/n2 pairs tied in x/y (a pair tied
in both counts in neither C nor D). Undefined (printed as nan) when either list is constant.
"""
import math
import sys


def tau_b(xs, ys):
    if len(xs) != len(ys):
        raise ValueError(f"{len(xs)} x values but {len(ys)} y values")
    n = len(xs)
    concordant = discordant = ties_x = ties_y = 0
    for i in range(n):
        for j in range(i + 1, n):
            dx = (xs[i] > xs[j]) - (xs[i] < xs[j])
            dy = (ys[i] > ys[j]) - (ys[i] < ys[j])
            if dx == 0:
                ties_x += 1
            if dy == 0:
                ties_y += 1
            if dx * dy > 0:
                concordant += 1
            elif dx * dy < 0:
                discordant += 1
    n0 = n * (n - 1) // 2
    denominator = math.sqrt((n0 - ties_x) * (n0 - ties_y))
    if denominator == 0:
        return float("nan"), concordant, discordant
    return (concordant - discordant) / denominator, concordant, discordant


def read_pairs(argv):
    if len(argv) == 2:
        xs = [float(v) for v in argv[0].split(",") if v]
        ys = [float(v) for v in argv[1].split(",") if v]
        return xs, ys
    if len(argv) == 1:
        xs, ys = [], []
        with open(argv[0], encoding="utf-8") as f:
            for line in f:
                line = line.split("#", 1)[0].split()
                if line:
                    xs.append(float(line[0]))
                    ys.append(float(line[1]))
        return xs, ys
    sys.exit(__doc__.strip().splitlines()[2].strip())


def main():
    xs, ys = read_pairs(sys.argv[1:])
    tau, concordant, discordant = tau_b(xs, ys)
    print(
        f"Kendall tau-b = {tau:.3f} (n = {len(xs)}, {concordant} concordant / {discordant} "
        f"discordant pairs of {len(xs) * (len(xs) - 1) // 2}); over n = {len(xs)} this is very "
        "noisy: one swapped pair moves it by about "
        f"{2 / max(1, len(xs) * (len(xs) - 1) // 2):.2f}"
    )


if __name__ == "__main__":
    main()

"""The wide workflow of the benchmarks: steps of one component that do not
read each other, so every step is ready at once."""

import os


def write(directory, component, n):
    """Writes `wide-N.yaml` into `directory`: `n` steps of `component` (named
    `echo`), each with input `{n: i}`; returns its path."""
    path = os.path.join(directory, f"wide-{n}.yaml")
    with open(path, "w") as out:
        out.write(f"name: wide-{n}\ncomponents:\n  echo: {{ path: '{component}' }}\nsteps:\n")
        for i in range(n):
            out.write(f"  - {{ id: s{i}, component: echo, input: {{ n: {i} }} }}\n")
    return path

"""Reads `perf script` output into samples: one list of frame symbols per
sample, innermost first (shared by the profile scripts in this folder)."""


def read_samples(path):
    samples, cur = [], None
    for line in open(path, errors='replace'):
        if not line.strip():
            if cur is not None:
                samples.append(cur)
                cur = None
            continue
        if not line.startswith(('\t', ' ')):
            cur = []
            continue
        parts = line.strip().split(' ', 1)
        if cur is not None:
            cur.append(parts[1] if len(parts) > 1 else '?')
    if cur is not None:
        samples.append(cur)
    return samples

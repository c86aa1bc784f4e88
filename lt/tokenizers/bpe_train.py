"""Learning BPE merges from word counts.

Counts every adjacent pair of symbols over the distinct words (each weighted by how
often it occurs), then repeatedly merges the most frequent pair. After a merge only
the words that held the pair are rewritten, and only the pairs they gained or lost
change count; a heap keyed by ``(-count, left bytes, right bytes)`` finds the next pair
(stale entries are skipped when popped). Ties go to the pair whose bytes sort first,
so training is deterministic.
"""

from __future__ import annotations

import heapq
import itertools
from collections import defaultdict


def _merge_symbols(word: list[int], a: int, b: int, new: int) -> list[int]:
    """``word`` with every non-overlapping ``a b``, left to right, replaced by ``new``."""
    out, i, n = [], 0, len(word)
    while i < n:
        if i + 1 < n and word[i] == a and word[i + 1] == b:
            out.append(new)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


def learn_merges(word_counts: dict[bytes, int], num_merges: int, min_frequency: int = 2) -> list[tuple[bytes, bytes]]:
    """Up to ``num_merges`` merges (byte-string pairs, in order), stopping early when no pair
    occurs ``min_frequency`` times. Symbols start as the 256 single bytes."""
    symbols = [bytes([i]) for i in range(256)]  # symbol id -> its bytes
    words = [list(w) for w in word_counts]  # each word as symbol ids
    freq = list(word_counts.values())
    count: dict[tuple[int, int], int] = defaultdict(int)
    holders: dict[tuple[int, int], set[int]] = defaultdict(set)  # pair -> words that (may) hold it
    for wi, (w, f) in enumerate(zip(words, freq)):
        for pair in itertools.pairwise(w):
            count[pair] += f
            holders[pair].add(wi)
    heap = [(-c, symbols[a], symbols[b], a, b) for (a, b), c in count.items()]
    heapq.heapify(heap)

    merges: list[tuple[bytes, bytes]] = []
    while heap and len(merges) < num_merges:
        neg, _, _, a, b = heapq.heappop(heap)
        if count.get((a, b), 0) != -neg:
            continue  # stale: the count changed since
        if -neg < min_frequency:
            break
        new = len(symbols)
        symbols.append(symbols[a] + symbols[b])
        merges.append((symbols[a], symbols[b]))
        delta: dict[tuple[int, int], int] = defaultdict(int)
        for wi in holders.pop((a, b)):
            w, f = words[wi], freq[wi]
            merged = _merge_symbols(w, a, b, new)
            if len(merged) == len(w):
                continue  # the word lost the pair to an earlier merge
            for pair in itertools.pairwise(w):
                delta[pair] -= f
            for pair in itertools.pairwise(merged):
                delta[pair] += f
                holders[pair].add(wi)
            words[wi] = merged
        for pair, d in delta.items():
            if d == 0:
                continue
            c = count[pair] + d
            if c > 0:
                count[pair] = c
                heapq.heappush(heap, (-c, symbols[pair[0]], symbols[pair[1]], *pair))
            else:
                del count[pair]
    return merges

"""Where the time of a batched run went: listing, decoding, waiting, the model, writing.

Decoding runs in a pool of threads while the model runs in the calling thread, so the stages
overlap: their wall times do not add up to the total. What tells the story is the consumer's
side. `waiting` is the time the model sat idle because no decoded batch was ready (decoding is
the limit when it is a large share of the total); `model` is the time inside the model calls.
Decoding is given as CPU seconds (what it costs the machine, summed over its threads) and as
wall seconds (summed over its threads too: wall well above CPU means its threads were waiting
for a core or for the GIL).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["StageTimes"]


@dataclass
class StageTimes:
    """Seconds per stage of one run (see the module docstring for how they overlap)."""

    listing: float = 0.0  # wall: finding and naming the files
    decode_cpu: float = 0.0  # CPU seconds of the decoding threads, summed over them
    decode_wall: float = 0.0  # wall seconds the decoding tasks ran, summed over the threads
    decode_threads: int = 0
    waiting: float = 0.0  # wall: the model idle, waiting for the next decoded batch
    model: float = 0.0  # wall: inside the model calls (and the ensemble's averaging)
    model_threads: int = 0  # intra-op threads the pipeline chose for the model; 0: not chosen
    writing: float = 0.0  # wall: writing the output files
    total: float = 0.0  # wall: from listing to the last file written
    images: int = 0

    def describe(self, writing: str = "writing") -> str:
        """One line, e.g. 'time 2.31 s: listing 0.02 s · decode + preprocess 1.10 s CPU …'.

        `writing` names the last stage (evaluate's also draws its plots and maps).
        """
        per = f" ({self.images / self.total:.0f} images/s)" if self.total > 0 and self.images else ""
        threads = f" in {self.decode_threads} thread{'s' * (self.decode_threads != 1)}"
        mt = self.model_threads
        chosen = f" ({mt} thread{'s' * (mt != 1)} from the 4th batch on)" if mt else ""
        return (
            f"time {self.total:.2f} s{per}: listing {self.listing:.2f} s · "
            f"decode + preprocess {self.decode_cpu:.2f} s CPU, {self.decode_wall:.2f} s wall{threads} · "
            f"model idle waiting for decoded batches {self.waiting:.2f} s · "
            f"model {self.model:.2f} s{chosen} · {writing} {self.writing:.2f} s"
        )

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}

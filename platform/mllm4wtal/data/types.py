"""The in-memory dataset every loader produces and every consumer reads.

Times are in seconds throughout; snippet indices convert with
``seconds = snippet * frames_per_snippet / fps`` (16 frames per I3D snippet).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Segment:
    """One ground-truth action instance, in seconds."""

    start: float
    end: float
    label: int  # index into WTALDataset.classes


@dataclass
class Video:
    """One video: its snippet features and (for evaluation) its ground truth."""

    name: str
    subset: str  # as in the annotation files, e.g. "validation"/"test" (THUMOS14)
    features: np.ndarray  # (T, D): RGB columns first, then flow; float32 or a float16 memmap view
    labels: tuple[int, ...]  # video-level class indices, sorted, unique
    segments: tuple[Segment, ...]
    duration: float  # seconds
    fps: float  # frame rate the features were extracted at

    @property
    def num_snippets(self) -> int:
        return int(self.features.shape[0])


@dataclass
class WTALDataset:
    """A WTAL benchmark: class list, videos of every subset, split names."""

    name: str
    classes: list[str]
    videos: list[Video]
    train_subset: str
    test_subset: str
    rgb_dim: int  # width of the RGB block; flow is the rest of the columns
    frames_per_snippet: int = 16
    # THUMOS14 ambiguous segments, video name -> [(start, end), ...] in seconds
    ambiguous: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    # optional per-class vocabulary (verbs / objects) for template descriptions
    vocabulary: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    # the roles (data.splits.assign_roles): "test" = select on the test subset; "holdout" =
    # select on ``select_names``, training videos kept out of ``train``
    select_protocol: str = "test"
    select_names: frozenset[str] = frozenset()
    select_roles: tuple[str, float, int] = ("test", 0.0, 0)  # protocol, fraction, seed

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def feature_dim(self) -> int:
        return int(self.videos[0].features.shape[1]) if self.videos else 0

    def split(self, subset: str) -> list[Video]:
        return [v for v in self.videos if v.subset == subset]

    @property
    def train(self) -> list[Video]:
        """The videos trained on: the training subset less the ``select`` hold-out."""
        return [v for v in self.split(self.train_subset) if v.name not in self.select_names]

    @property
    def select(self) -> list[Video]:
        """The videos that choose (best.pt, a sweep's trials): the hold-out, or the test
        subset under the field's protocol (``select_protocol == "test"``)."""
        if self.select_protocol == "test":
            return self.test
        return [v for v in self.split(self.train_subset) if v.name in self.select_names]

    @property
    def test(self) -> list[Video]:
        return self.split(self.test_subset)

    def role(self, name: str) -> list[Video]:
        """``train``, ``select`` or ``test``."""
        if name not in ("train", "select", "test"):
            raise ValueError(f"role must be train, select or test, not {name!r}")
        return getattr(self, name)

    def snippet_to_seconds(self, snippet: float | np.ndarray, fps: float) -> float | np.ndarray:
        return snippet * self.frames_per_snippet / fps

    def ground_truth(self, subset: str | None = None, videos: list[Video] | None = None
                     ) -> dict:
        """Ground truth in the ActivityNet JSON layout (``database``), seconds: of ``videos``,
        else of ``subset``, else of every video."""
        database = {}
        for v in self.videos if videos is None else videos:
            if subset is not None and v.subset != subset:
                continue
            database[v.name] = {
                "subset": v.subset,
                "duration": v.duration,
                "annotations": [
                    {"segment": [s.start, s.end], "label": self.classes[s.label]}
                    for s in v.segments
                ],
            }
        return {"version": self.name, "database": database}

"""The built-in synthetic WTAL benchmark: THUMOS-shaped, exactly reproducible from a seed.

Each class is a sequence of three sub-actions, approach -> core -> follow-through, named
after real sports phases (PoleVault = run-up, vault, landing). The core is class-specific
and strong; approach and follow-through are weaker and mostly *shared* between classes
(the run-up belongs to PoleVault, HighJump, LongJump, JavelinThrow and CricketBowling), so
a classifier trained from video labels needs only the core: **incomplete** localisation.
Around every instance the RGB stream carries the class's *scene* (pool, track, court) for
``context_len`` snippets while the flow stream carries no action motion: a model that
trusts RGB context localises **over-completely**. Generic background scenes and camera
motion, optional hard negatives (a shared sub-action in the class's scene without its core,
e.g. an aborted run-up, not annotated), per-instance amplitude jitter, Gaussian noise and
I3D-like temporal smoothing complete the picture.

Feature layout per snippet: ``[RGB (rgb_dim) | flow (flow_dim)]``. Every prototype (class
scene, sub-action appearance and motion, background scene, camera motion) is a random unit
direction of its stream drawn from the seed; a snippet is a sum of prototypes times
amplitudes plus noise. Ground truth is exact: segments on snippet boundaries, in seconds
(``snippet * 16 / fps``). :func:`generate` also returns the per-snippet layout (phase,
region, class) and the prototypes, for tests and diagnostics. Knobs: the fields of
:class:`SyntheticConfig`; see ``docs/synthetic.md``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from mllm4wtal.config import SyntheticConfig
from mllm4wtal.config.schema import footprint
from mllm4wtal.data.types import Segment, Video, WTALDataset

FRAMES_PER_SNIPPET = 16
TRAIN_SUBSET, TEST_SUBSET = "validation", "test"  # THUMOS14 names
N_BACKGROUND = 16  # generic background scenes / camera motions to draw from

# Region codes of SnippetLayout.region.
BACKGROUND, CONTEXT, ACTION, HARD_NEGATIVE = 0, 1, 2, 3

# class -> (approach, core, follow-through, verbs, objects). Phase names are the identity of
# a sub-action: classes naming the same phase share its appearance and motion prototypes.
CLASS_TABLE: dict[str, tuple[str, str, str, list[str], list[str]]] = {
    "BaseballPitch": ("windup", "pitch", "follow-through", ["wind", "throw", "pitch"],
                      ["ball", "mound", "glove"]),
    "BasketballDunk": ("dribble", "dunk", "landing", ["dribble", "jump", "dunk"],
                       ["ball", "hoop", "rim"]),
    "Billiards": ("aim", "stroke", "watch", ["aim", "strike", "pocket"],
                  ["cue", "ball", "table"]),
    "CleanAndJerk": ("grip", "lift", "drop", ["grip", "lift", "jerk"],
                     ["barbell", "plates", "platform"]),
    "CliffDiving": ("stand", "plunge", "splash", ["climb", "leap", "plunge"],
                    ["cliff", "sea", "rock"]),
    "CricketBowling": ("run-up", "bowl", "follow-through", ["run", "bowl", "deliver"],
                       ["ball", "pitch", "wicket"]),
    "CricketShot": ("stance", "drive", "follow-through", ["swing", "hit", "drive"],
                    ["bat", "ball", "crease"]),
    "Diving": ("stand", "dive", "splash", ["jump", "twist", "dive"],
               ["springboard", "pool", "water"]),
    "FrisbeeCatch": ("sprint", "catch", "landing", ["run", "leap", "catch"],
                     ["frisbee", "disc", "field"]),
    "GolfSwing": ("stance", "swing", "follow-through", ["address", "swing", "strike"],
                  ["club", "ball", "tee"]),
    "HammerThrow": ("spin", "heave", "watch", ["spin", "whirl", "release"],
                    ["hammer", "cage", "wire"]),
    "HighJump": ("run-up", "flop", "landing", ["run", "jump", "clear"],
                 ["bar", "mat", "standards"]),
    "JavelinThrow": ("run-up", "launch", "watch", ["run", "throw", "launch"],
                     ["javelin", "runway", "field"]),
    "LongJump": ("run-up", "leap", "landing", ["sprint", "jump", "land"],
                 ["sandpit", "board", "runway"]),
    "PoleVault": ("run-up", "vault", "landing", ["run", "plant", "vault", "clear"],
                  ["pole", "bar", "mat"]),
    "Shotput": ("glide", "put", "watch", ["glide", "push", "put"],
                ["shot", "circle", "toeboard"]),
    "SoccerPenalty": ("sprint", "kick", "celebrate", ["run", "kick", "shoot"],
                      ["ball", "goal", "keeper"]),
    "TennisSwing": ("stance", "forehand", "follow-through", ["swing", "serve", "hit"],
                    ["racket", "ball", "net"]),
    "ThrowDiscus": ("spin", "fling", "watch", ["spin", "rotate", "throw"],
                    ["discus", "circle", "cage"]),
    "VolleyballSpiking": ("sprint", "spike", "landing", ["jump", "spike", "smash"],
                          ["ball", "net", "court"]),
}


def class_table(num_classes: int) -> dict[str, tuple[str, str, str, list[str], list[str]]]:
    """The first ``num_classes`` THUMOS-like classes, then generic ones (``Action020`` ...)."""
    names = list(CLASS_TABLE)
    table = {n: CLASS_TABLE[n] for n in names[:num_classes]}
    # generic extras still share approach/finish phases in small groups, like the real ones
    approaches = ["walk", "crouch", "turn", "reach", "step", "lean", "hop"]
    finishes = ["rest", "bow", "retreat", "pause", "wave"]
    for c in range(len(table), num_classes):
        table[f"Action{c:03d}"] = (approaches[c % 7], f"motion{c:03d}", finishes[c % 5],
                                   ["move", "perform"], [f"object{c:03d}"])
    return table


@dataclass
class Prototypes:
    """The unit directions every snippet is built from (RGB width / flow width)."""

    phases: list[str]  # phase (sub-action) names; index = SnippetLayout.phase
    scene: np.ndarray  # (C, rgb) class scenes
    appearance: np.ndarray  # (P, rgb) sub-action appearance
    motion: np.ndarray  # (P, flow) sub-action motion
    background: np.ndarray  # (N_BACKGROUND, rgb) generic scenes
    camera: np.ndarray  # (N_BACKGROUND, flow) generic camera motion
    class_phases: np.ndarray  # (C, 3) phase index of approach, core, follow-through


@dataclass
class SnippetLayout:
    """What each snippet of one video is made of (derived ground truth, for diagnostics)."""

    region: np.ndarray  # (T,) int8: BACKGROUND, CONTEXT, ACTION or HARD_NEGATIVE
    phase: np.ndarray  # (T,) int16: index into Prototypes.phases, -1 where none
    cls: np.ndarray  # (T,) int16: class whose scene/action is there, -1 for plain background


@dataclass
class SyntheticTruth:
    """Everything :func:`make_synthetic` knows beyond the dataset: layouts and prototypes."""

    prototypes: Prototypes
    layouts: dict[str, SnippetLayout] = field(default_factory=dict)  # by video name


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    """``n`` random unit directions, mutually orthogonal where ``n <= dim``.

    Orthogonal within a family so that no two classes' cores (or scenes) are similar by
    accident of the draw: at 64 dims random pairs reach |cos| ~ 0.4. Similarity between
    classes is planted on purpose only, through shared sub-actions.
    """
    v = rng.standard_normal((n, dim))
    if n <= dim:
        q, r = np.linalg.qr(v.T)
        return (q * np.sign(np.diag(r))).T  # sign fix: a unique, seed-determined basis
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _prototypes(cfg: SyntheticConfig, table: dict, rng: np.random.Generator) -> Prototypes:
    if cfg.shared_subactions:
        keys = [(a, c, f) for a, c, f, *_ in table.values()]
    else:  # every class owns its approach / follow-through: no shared sub-actions
        keys = [(f"{n}:{a}", c, f"{n}:{f}") for n, (a, c, f, *_) in table.items()]
    phases = sorted({p for k in keys for p in k})
    index = {p: i for i, p in enumerate(phases)}

    def unit(n: int, dim: int) -> np.ndarray:
        return _unit(rng, n, dim).astype(np.float32)

    return Prototypes(
        phases=phases,
        scene=unit(len(table), cfg.rgb_dim),
        appearance=unit(len(phases), cfg.rgb_dim),
        motion=unit(len(phases), cfg.flow_dim),
        background=unit(N_BACKGROUND, cfg.rgb_dim),
        camera=unit(N_BACKGROUND, cfg.flow_dim),
        class_phases=np.array([[index[p] for p in k] for k in keys], dtype=np.int64),
    )


def _place(rng: np.random.Generator, length: int, footprints: list[int]) -> list[int] | None:
    """Random non-overlapping offsets of items with the given footprints, in input order."""
    free = length - sum(footprints)
    if free < 0:
        return None
    order = rng.permutation(len(footprints))
    cuts = np.sort(rng.integers(0, free + 1, size=len(footprints)))
    offsets = [0] * len(footprints)
    pos = 0
    for k, i in enumerate(order):
        offsets[i] = pos + int(cuts[k])
        pos += footprints[i]
    return offsets


@dataclass
class _Item:
    cls: int
    length: int
    negative: bool = False  # hard negative: not annotated


def _draw_items(cfg: SyntheticConfig, rng: np.random.Generator, length: int,
                num_classes: int) -> list[_Item]:
    n_cls = 2 if rng.random() < cfg.second_class_prob else 1
    classes = sorted(int(c) for c in rng.choice(num_classes, size=n_cls, replace=False))
    per_class = [[_Item(c, int(rng.integers(cfg.min_instance_len, cfg.max_instance_len + 1)))
                  for _ in range(int(rng.integers(1, cfg.max_instances + 1)))]
                 for c in classes]
    neg = None
    if rng.random() < cfg.hard_negative_prob:
        lo = max(2, cfg.min_instance_len // 2)
        neg = _Item(classes[0], int(rng.integers(lo, max(lo, cfg.max_instance_len // 2) + 1)),
                    negative=True)

    def fits(items: list[_Item]) -> bool:
        return sum(footprint(it.length, cfg.context_len) for it in items) <= length

    # too crowded: drop the hard negative, then instances of the longest list; a second
    # class goes only when it is down to nothing. __post_init__ guarantees one instance fits.
    items = [it for group in per_class for it in group] + ([neg] if neg else [])
    if not fits(items) and neg is not None:
        items, neg = items[:-1], None
    while not fits(items):
        longest = max(per_class, key=len)
        if len(longest) > 1:
            longest.pop()
        else:
            per_class.pop()
        items = [it for group in per_class for it in group]
    return items


def _smooth(x: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average over time with edge padding (I3D's temporal receptive field)."""
    if window <= 1:
        return x
    pad = window // 2
    padded = np.pad(x, ((pad, window - 1 - pad), (0, 0)), mode="edge")
    out = padded[: len(x)].copy()
    for k in range(1, window):  # shifted sums: exact enough in float32, unlike a cumsum
        out += padded[k: k + len(x)]
    out *= np.float32(1.0 / window)
    return out


def _video(cfg: SyntheticConfig, protos: Prototypes, rng: np.random.Generator
           ) -> tuple[np.ndarray, list[tuple[int, int, int]], SnippetLayout]:
    t = int(rng.integers(cfg.min_len, cfg.max_len + 1))
    items = _draw_items(cfg, rng, t, len(protos.scene))
    offsets = _place(rng, t, [footprint(it.length, cfg.context_len) for it in items])
    assert offsets is not None  # _draw_items made them fit

    layout = SnippetLayout(region=np.zeros(t, np.int8), phase=np.full(t, -1, np.int16),
                           cls=np.full(t, -1, np.int16))
    # float32 throughout: the output dtype, and half the memory traffic at 1024+1024 widths
    feats = np.zeros((t, cfg.rgb_dim + cfg.flow_dim), dtype=np.float32)
    rgb, flow = feats[:, : cfg.rgb_dim], feats[:, cfg.rgb_dim:]  # views
    # generic background: the scene drifts between two generic scenes, steady camera motion
    b0, b1 = rng.choice(N_BACKGROUND, size=2, replace=False)
    w = np.linspace(0.0, 1.0, t, dtype=np.float32)[:, None]
    rgb += cfg.clutter_strength * ((1 - w) * protos.background[b0] + w * protos.background[b1])
    flow += 0.5 * cfg.clutter_strength * protos.camera[rng.integers(N_BACKGROUND)]

    j = cfg.amplitude_jitter
    scene_amp = cfg.scene_strength * rng.uniform(1 - j, 1 + j)  # per video (camera, lighting)
    segments = []
    for it, off in zip(items, offsets, strict=True):
        s = off + cfg.context_len + 1
        e = s + it.length
        lo, hi = s - cfg.context_len, e + cfg.context_len
        rgb[lo:hi] += scene_amp * protos.scene[it.cls]
        layout.region[lo:hi] = CONTEXT
        layout.cls[lo:hi] = it.cls
        approach, core, follow = protos.class_phases[it.cls]
        gain = rng.uniform(1 - j, 1 + j)  # per instance: how vigorous this attempt is
        if it.negative:  # a lone shared phase: e.g. an aborted run-up in the venue
            parts = [(approach if rng.random() < 0.5 else follow, s, e, cfg.phase_strength)]
            layout.region[s:e] = HARD_NEGATIVE
        else:
            n = e - s
            share = float(np.clip(cfg.core_share + rng.uniform(-0.1, 0.1), 0.05, 1.0))
            n_core = min(n, max(1, round(n * share)))
            n_app = int(rng.integers(0, n - n_core + 1)) if n > n_core else 0
            c0, c1 = s + n_app, s + n_app + n_core
            parts = [(approach, s, c0, cfg.phase_strength), (core, c0, c1, cfg.core_strength),
                     (follow, c1, e, cfg.phase_strength)]
            layout.region[s:e] = ACTION
            segments.append((s, e, it.cls))
        for phase, a, b, amp in parts:
            if b > a:
                # motion is what makes an action; appearance of the phase is half as strong
                rgb[a:b] += 0.5 * gain * amp * protos.appearance[phase]
                flow[a:b] += gain * amp * protos.motion[phase]
                layout.phase[a:b] = phase

    if cfg.noise > 0:
        noise = rng.standard_normal(feats.shape, dtype=np.float32)
        noise *= np.float32(cfg.noise)
        feats += noise
    feats = _smooth(feats, cfg.smoothing)
    # unit-norm prototypes spread over many dims are tiny per dim; scale each stream to an
    # RMS per dim of order 1, as real I3D features, so standard initialisations train well
    feats[:, : cfg.rgb_dim] *= np.float32(np.sqrt(cfg.rgb_dim))
    feats[:, cfg.rgb_dim:] *= np.float32(np.sqrt(cfg.flow_dim))
    return feats, sorted(segments), layout


def generate(cfg: SyntheticConfig | None = None) -> tuple[WTALDataset, SyntheticTruth]:
    """The benchmark plus its hidden truth (layouts, prototypes); deterministic in ``cfg``."""
    cfg = cfg or SyntheticConfig()
    table = class_table(cfg.num_classes)
    names = list(table)
    # one stream, fixed draw order: same config -> byte-identical output
    rng = np.random.Generator(np.random.PCG64(cfg.seed))
    protos = _prototypes(cfg, table, rng)
    truth = SyntheticTruth(prototypes=protos)
    to_sec = FRAMES_PER_SNIPPET / cfg.fps
    videos = []
    for subset, count in ((TRAIN_SUBSET, cfg.train_videos), (TEST_SUBSET, cfg.test_videos)):
        for i in range(count):
            feats, segs, layout = _video(cfg, protos, rng)
            name = f"video_{subset}_{i:07d}"
            truth.layouts[name] = layout
            videos.append(Video(
                name=name, subset=subset, features=feats,
                labels=tuple(sorted({c for *_, c in segs})),
                segments=tuple(Segment(s * to_sec, e * to_sec, c) for s, e, c in segs),
                duration=feats.shape[0] * to_sec, fps=cfg.fps))
    vocabulary = {n: {"verbs": list(v), "objects": list(o), "subactions": [a, c, f]}
                  for n, (a, c, f, v, o) in table.items()}
    dataset = WTALDataset(name="Synthetic", classes=names, videos=videos,
                          train_subset=TRAIN_SUBSET, test_subset=TEST_SUBSET,
                          rgb_dim=cfg.rgb_dim, frames_per_snippet=FRAMES_PER_SNIPPET,
                          vocabulary=vocabulary)
    return dataset, truth


def make_synthetic(cfg: SyntheticConfig | None = None) -> WTALDataset:
    """The platform's default benchmark, generated from ``cfg`` (default knobs if None)."""
    return generate(cfg)[0]


def actionness(video: Video, frames_per_snippet: int = FRAMES_PER_SNIPPET) -> np.ndarray:
    """Exact per-snippet foreground indicator (T,) float32 of a video, from its segments."""
    out = np.zeros(video.num_snippets, dtype=np.float32)
    for s in video.segments:
        a = int(round(s.start * video.fps / frames_per_snippet))
        b = int(round(s.end * video.fps / frames_per_snippet))
        out[max(a, 0):b] = 1.0
    return out


def fingerprint(ds: WTALDataset) -> str:
    """sha256 over every feature byte and annotation: equal iff the data are identical."""
    h = hashlib.sha256()
    for v in ds.videos:
        h.update(v.name.encode())
        h.update(np.ascontiguousarray(v.features).tobytes())
        h.update(repr((v.labels, v.segments, v.duration)).encode())
    return h.hexdigest()

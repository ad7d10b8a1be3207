"""The ``hf`` backend: a Hugging Face video-language model from a local directory.

The directory holds what ``save_pretrained`` writes (config, weights, processor, tokenizer,
chat template); it is loaded with ``AutoProcessor`` and ``AutoModelForImageTextToText``,
``local_files_only``: nothing is ever downloaded. Each prompt goes through the processor's
chat template with the video's frames, either as one video (``frames_as="video"``, models
with a video processor: Qwen2-VL, Qwen2.5-VL, LLaVA-OneVision, SmolVLM, ...) or as a
sequence of images (``"images"``, any multi-image model, e.g. LLaVA); ``"auto"`` takes the
video path when the processor has a video processor. Prompts are batched (left padding) and
decoded greedily unless a temperature is given; only the new tokens are decoded.

Note: in transformers 5 every video processor needs ``torchvision`` built for the installed
torch; without it such processors do not load (the error says so) and image-only
processors (LLaVA) still work.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mllm4wtal.describe.backends import Answer, Backend, BackendSpec, Query
from mllm4wtal.errors import UserError

FRAMES_AS = ("auto", "video", "images")
DTYPES = ("auto", "float32", "float16", "bfloat16")


def _import_transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise UserError("backend 'hf' needs transformers and av: "
                        "pip install 'mllm4wtal[mllm]'") from None
    return transformers


def _load_error(what: str, path: Path, e: Exception) -> UserError:
    msg = f"{type(e).__name__}: {e}".strip().splitlines()[0][:300]
    hint = ""
    if "torchvision" in str(e).lower() or "_extra_content" in str(e):
        hint = ("; video processors in transformers 5 need torchvision built for your torch "
                "(install the torchvision release that matches it)")
    return UserError(f"--model {path}: cannot load the {what} ({msg}){hint}")


class HFBackend(Backend):
    name = "hf"
    needs_frames = True
    thread_safe = False

    def __init__(self, spec: BackendSpec, vocabulary: Mapping[str, Any] | None = None) -> None:
        super().__init__(spec, vocabulary)
        if not spec.model:
            raise UserError("backend 'hf' needs --model: a local directory with a "
                            "video-language model (what save_pretrained writes)")
        path = Path(spec.model).expanduser()
        if not path.is_dir() or not (path / "config.json").is_file():
            raise UserError(f"--model {spec.model}: not a local model directory with a "
                            "config.json; the hf backend loads local files only (download "
                            "the model yourself, e.g. `hf download ORG/NAME --local-dir DIR`)")
        self.model = str(path.resolve())
        self.max_new_tokens = int(spec.option("max_new_tokens", 256))
        self.temperature = float(spec.option("temperature", 0.0))
        self.seed = int(spec.option("seed", 0))
        frames_as = str(spec.option("frames_as", "auto"))
        dtype_name = str(spec.option("dtype", "auto"))
        if frames_as not in FRAMES_AS:
            raise UserError(f"--frames-as must be one of {', '.join(FRAMES_AS)}, got "
                            f"{frames_as!r}")
        if dtype_name not in DTYPES:
            raise UserError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype_name!r}")
        if self.max_new_tokens < 1:
            raise UserError("--max-new-tokens must be at least 1")

        import torch

        transformers = _import_transformers()
        device = str(spec.option("device", "auto"))
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise UserError("--device cuda, but torch sees no GPU (on Ray, give the actors "
                            "GPUs with --num-gpus)")
        self.device = torch.device(device)
        if dtype_name == "auto":
            dtype = (torch.bfloat16 if self.device.type == "cuda"
                     and torch.cuda.is_bf16_supported() else torch.float32)
        else:
            dtype = getattr(torch, dtype_name)
        self.dtype = dtype
        try:
            self.processor = transformers.AutoProcessor.from_pretrained(
                str(path), local_files_only=True)
        except Exception as e:  # the library's errors vary by version and model
            raise _load_error("processor", path, e) from None
        kwargs: dict[str, Any] = {"dtype": dtype, "local_files_only": True}
        if spec.option("attn_implementation"):
            kwargs["attn_implementation"] = spec.option("attn_implementation")
        try:
            self.net = transformers.AutoModelForImageTextToText.from_pretrained(
                str(path), **kwargs)
        except Exception as e:
            raise _load_error("model (AutoModelForImageTextToText)", path, e) from None
        self.net.to(self.device).eval()

        self.tokenizer = getattr(self.processor, "tokenizer", None)
        if self.tokenizer is None:
            raise UserError(f"--model {path}: the processor has no tokenizer")
        self.tokenizer.padding_side = "left"  # generation appends on the right
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if frames_as == "auto":
            frames_as = ("video" if getattr(self.processor, "video_processor", None) is not None
                         else "images")
        if frames_as == "video" and getattr(self.processor, "video_processor", None) is None:
            raise UserError(f"--model {path}: the processor has no video processor; use "
                            "--frames-as images")
        self.frames_as = frames_as
        if getattr(self.processor, "chat_template", None) is None and \
                getattr(self.tokenizer, "chat_template", None) is None:
            raise UserError(f"--model {path}: no chat template (chat_template.jinja or in "
                            "tokenizer_config.json); an instruction-tuned model is needed")
        eos = self.net.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            eos_ids.add(self.tokenizer.eos_token_id)
        self.eos_ids = eos_ids
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ inputs

    def messages(self, query: Query) -> list[dict[str, Any]]:
        """The chat of one query: the frames (one video, or one image each), then the prompt."""
        n = len(query.frames) if query.frames is not None else 0
        visual = ([{"type": "video"}] if self.frames_as == "video"
                  else [{"type": "image"} for _ in range(n)])
        return [{"role": "user", "content": [*visual, {"type": "text", "text": query.prompt}]}]

    def texts(self, queries: Sequence[Query]) -> list[str]:
        return [self.processor.apply_chat_template(self.messages(q), tokenize=False,
                                                   add_generation_prompt=True)
                for q in queries]

    def inputs(self, queries: Sequence[Query]) -> Any:
        """The processor's batch (token ids, attention mask, pixel values, grids)."""
        for q in queries:
            if q.frames is None:
                raise ValueError("the hf backend answers about frames; none were given")
        texts = self.texts(queries)
        frames = [np.asarray(q.frames.array) for q in queries]  # type: ignore[union-attr]
        if self.frames_as == "video":
            batch = self.processor(text=texts, videos=frames, padding=True,
                                   return_tensors="pt", do_sample_frames=False)
        else:
            batch = self.processor(text=texts, images=[list(f) for f in frames], padding=True,
                                   return_tensors="pt")
        out = {}
        for k, v in batch.items():
            if hasattr(v, "to"):
                v = v.to(self.device)
                if v.is_floating_point():
                    v = v.to(self.dtype)
            out[k] = v
        return out

    # ------------------------------------------------------------------ generation

    def answer(self, queries: Sequence[Query]) -> list[Answer]:
        import torch

        with self._lock, torch.inference_mode():
            inputs = self.inputs(queries)
            gen: dict[str, Any] = {"max_new_tokens": self.max_new_tokens,
                                   "pad_token_id": self.tokenizer.pad_token_id}
            if self.temperature > 0:
                torch.manual_seed(self.seed)
                gen.update(do_sample=True, temperature=self.temperature)
            else:
                gen.update(do_sample=False)
            out = self.net.generate(**inputs, **gen)
            new = out[:, inputs["input_ids"].shape[1]:].cpu()
        texts = self.processor.batch_decode(new, skip_special_tokens=True)
        answers = []
        for row, text in zip(new.tolist(), texts, strict=True):
            stop = next((i for i, t in enumerate(row) if t in self.eos_ids), None)
            if stop is not None:
                answers.append(Answer(text.strip(), "stop", stop))
            else:
                answers.append(Answer(text.strip(), "length" if len(row) >= self.max_new_tokens
                                      else "stop", len(row)))
        return answers

    def close(self) -> None:
        import torch

        self.net = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

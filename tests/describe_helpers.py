"""Helpers of test_describe: a counting backend, a video writer, a tiny video-language model
built offline, and a local chat-completions server."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
from mllm4wtal.describe.backends import Answer, Backend, FatalBackendError, Query

# ---------------------------------------------------------------- a backend that counts


class CountingBackend(Backend):
    """Answers without a model and logs every (video, class, kind) it is asked; can stop
    the job like Ctrl-C when it is about to describe the ``interrupt_at``-th video, and
    fail the videos in ``fail``. Options (they travel to Ray actors, class attributes do
    not): ``fail_on`` videos raise, ``fatal_on`` videos raise a FatalBackendError, and
    ``die_on`` videos end the process like a crash (only in a Ray actor!)."""

    name = "counting"
    needs_frames = False
    thread_safe = True
    asked: list[tuple[str, str, str]] = []
    videos_seen = 0
    interrupt_at: int | None = None
    fail: frozenset[str] = frozenset()
    lock = threading.Lock()

    @classmethod
    def reset(cls, interrupt_at: int | None = None, fail: Sequence[str] = ()) -> None:
        cls.asked, cls.videos_seen = [], 0
        cls.interrupt_at, cls.fail = interrupt_at, frozenset(fail)

    def describe(self, video, classes, frames):  # type: ignore[no-untyped-def]
        with self.lock:
            type(self).videos_seen += 1
            if self.interrupt_at is not None and self.videos_seen >= self.interrupt_at:
                raise KeyboardInterrupt
        if video in (self.spec.option("die_on") or ()):
            os._exit(3)  # no clean-up of any kind: the actor dies
        if video in (self.spec.option("fatal_on") or ()):
            raise FatalBackendError(f"the server refuses every request ({video})")
        if video in self.fail or video in (self.spec.option("fail_on") or ()):
            raise RuntimeError(f"cannot describe {video}")
        return super().describe(video, classes, frames)

    def answer(self, queries: Sequence[Query]) -> list[Answer]:
        # in a subprocess (the CLI): $COUNTING_LOG gets one line per query asked, and each
        # batch takes $COUNTING_DELAY seconds, so that the test can kill it half way
        log = os.environ.get("COUNTING_LOG")
        with self.lock:
            self.asked.extend((q.video, q.cls, q.kind) for q in queries)
            if log:
                with open(log, "a") as fh:
                    fh.writelines(f"{q.video}\t{q.cls}\t{q.kind}\n" for q in queries)
        time.sleep(float(os.environ.get("COUNTING_DELAY", "0")))
        return [Answer(f"a person does {q.cls} in {q.video} ({q.kind}).", "stop")
                for q in queries]


# ---------------------------------------------------------------- videos


def write_video(path: Path, n: int = 24, size: tuple[int, int] = (48, 64), fps: int = 12,
                step: int = 10) -> Path:
    """An mpeg4 video whose frame i is flat grey at brightness ``i * step``."""
    import av

    h, w = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for i in range(n):
            img = np.full((h, w, 3), i * step, dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_frame_folder(folder: Path, n: int = 10, size: tuple[int, int] = (48, 64),
                       step: int = 20) -> Path:
    """frame_1.png ... frame_<n>.png (natural order matters: frame_10 after frame_9)."""
    from PIL import Image

    folder.mkdir(parents=True)
    h, w = size
    for i in range(n):
        Image.fromarray(np.full((h, w, 3), i * step, dtype=np.uint8)).save(
            folder / f"frame_{i + 1}.png")
    return folder


# ---------------------------------------------------------------- a tiny VLM, offline

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}<image>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def build_tiny_llava(path: Path, seed: int = 0) -> Path:
    """A randomly initialised LLaVA (CLIP vision tower + Llama text model, ~25k parameters)
    with a byte-level BPE tokenizer trained here, a chat template and LLaVA's image
    processor, written with save_pretrained: what a real model directory holds."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["This video contains the actions of pole vault. Please describe "
                             "the action of pole vault in detail, with one sentence."] * 4,
                            trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                        pad_token="<|endoftext|>", chat_template=CHAT_TEMPLATE)
    ids = {s: tokenizer.convert_tokens_to_ids(s) for s in SPECIAL}
    image_processor = LlavaImageProcessorPil(size={"shortest_edge": 28},
                                             crop_size={"height": 28, "width": 28})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer,
                               patch_size=14, vision_feature_select_strategy="default",
                               num_additional_image_tokens=1, chat_template=CHAT_TEMPLATE)
    config = LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=16, intermediate_size=32,
                           num_hidden_layers=1, num_attention_heads=2, image_size=28,
                           patch_size=14, projection_dim=16),
        text_config=dict(model_type="llama", vocab_size=len(tokenizer), hidden_size=16,
                         intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=1, max_position_embeddings=512,
                         bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                         pad_token_id=ids["<|endoftext|>"]),
        image_token_index=ids["<image>"], vision_feature_select_strategy="default",
        vision_feature_layer=-1, image_seq_length=4)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


# ---------------------------------------------------------------- a chat-completions server


class FakeChatServer:
    """``/v1/chat/completions`` and ``/v1/models`` on 127.0.0.1, in a thread.

    ``script`` is a list of what the first requests to chat/completions get, in arrival
    order: an HTTP status (an error with that code), or ``("sleep", s)`` (answer after s
    seconds: a client timeout). Later requests are answered 200 with the prompt echoed.
    Every request is logged (path, headers, JSON body)."""

    def __init__(self, script: Sequence[Any] = (), model: str = "tiny-vlm",
                 error_body: str = "") -> None:
        self.script = list(script)
        self.model = model
        self.error_body = error_body
        self.log: list[dict[str, Any]] = []
        self.outcomes: list[Any] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _send(self, code: int, body: dict | str, headers: dict | None = None) -> None:
                data = (body if isinstance(body, str) else json.dumps(body)).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out
                    pass

            def do_GET(self) -> None:  # noqa: N802
                with server.lock:
                    server.log.append({"method": "GET", "path": self.path,
                                       "headers": dict(self.headers)})
                if self.path == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": server.model}]})
                else:
                    self._send(404, {"error": "no such path"})

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.log.append({"method": "POST", "path": self.path,
                                       "headers": dict(self.headers), "body": body})
                    action = server.script.pop(0) if server.script else 200
                    server.outcomes.append(action)
                if self.path != "/v1/chat/completions":
                    self._send(404, {"error": "no such path"})
                    return
                if isinstance(action, tuple) and action[0] == "sleep":
                    time.sleep(action[1])
                    action = 200
                if action != 200:
                    body_text = server.error_body.replace(
                        "{auth}", self.headers.get("Authorization", ""))
                    self._send(action, body_text or {"error": {"message": f"status {action}"}},
                               {"Retry-After": "0"} if action == 429 else None)
                    return
                prompt = body["messages"][0]["content"][-1]["text"]
                self._send(200, {
                    "id": "x", "object": "chat.completion", "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop", "message": {
                        "role": "assistant", "content": f"Answer: {prompt}"}}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 7}})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FakeChatServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def chats(self) -> list[dict[str, Any]]:
        return [r for r in self.log if r["method"] == "POST"]

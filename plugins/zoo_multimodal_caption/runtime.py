"""The caption model's inference loop (numpy + tokenizers + Pillow, no torch).

Graphs: `image_encoder` (images -> latents), `image_decoder` (latents -> images),
`text_encoder` (tokens -> latents), `text_decoder_step` (tokens, latents, cache -> logits,
cache). Everything between graph calls is here: tokenising, greedy / beam / top-k-top-p
decoding, stopping, detokenising, cosine similarities. `zoo sample` runs this loop on the
torch modules and `zoo run` on onnxruntime sessions, so both give the same captions.
Greedy and sampled decoding keep the key/value cache on the engine's device (`resident`);
beam search reorders the cache's rows after every step, which it does in numpy, so there
the cache comes back to the host.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from zoo.errors import ExportError
from zoo.outputs import SampleOutput, to_uint8
from zoo.runtime.cost import FLOAT32, FLOAT64, Cost, decode_costs, widest_feature_map
from zoo.runtime.images import describe_source, read_square, to_model_input
from zoo.runtime.loop import ModelRuntime
from zoo.runtime.resident import Resident
from zoo.runtime.sampling import (
    batches,
    draw,
    filter_logits,
    log_softmax,
    merged_generators,
    request_rows,
    row_generators,
    run_batched,
    softmax,
)
from zoo_multimodal_caption.config import CaptionSampleOptions
from zoo_multimodal_caption.text_tokenizer import BOS_ID, EOS_ID, PAD_ID, decode, encode, tokenizer_from_json

BATCH = 64  # items per encoder/decoder graph call: bounds memory at 512 px
TOKENIZER_FILE = "tokenizer.json"
EXAMPLES_ARRAY = "example_images"  # (N, S, S, 3) uint8 held-out images, captioned when no input is given


@dataclass
class DecoderState:
    """The rows being decoded: their latents, tokens so far ([BOS] first) and key/value cache."""

    latents: np.ndarray  # (N, latent)
    tokens: np.ndarray  # (N, t) int64
    cache: np.ndarray | Resident  # (N, layers, 2, heads, cached positions, head_dim)

    def select(self, rows: np.ndarray) -> DecoderState:
        assert isinstance(self.cache, np.ndarray), "only beam search selects rows, and its cache is numpy"
        return DecoderState(self.latents[rows], self.tokens[rows], self.cache[rows])

    def extend(self, next_tokens: np.ndarray) -> DecoderState:
        return DecoderState(self.latents, np.concatenate([self.tokens, next_tokens[:, None]], axis=1), self.cache)


class CaptionRuntime(ModelRuntime[CaptionSampleOptions]):
    options_class = CaptionSampleOptions
    per_row_seeds = True

    def __init__(self, components, config, arrays, files) -> None:
        super().__init__(components, config, arrays, files)
        if TOKENIZER_FILE not in files:
            raise ExportError(f"the caption model's {TOKENIZER_FILE} is missing; export the model again")
        self.tokenizer = tokenizer_from_json(files[TOKENIZER_FILE].decode())
        text = config["text"]
        self.image_size = config["image"]["size"]
        self.max_length = text["max_length"]
        self.cache_shape = (
            text["decoder_layers"],
            text["decoder_heads"],
            text["embedding_dim"] // text["decoder_heads"],
        )
        # ids the decoder must never emit: [PAD], [BOS], and the output rows the tokenizer left unused
        self.banned = np.zeros(text["vocab_size"], dtype=bool)
        self.banned[[PAD_ID, BOS_ID]] = True
        self.banned[self.tokenizer.get_vocab_size() :] = True

    # -- sampling ---------------------------------------------------------------------------

    def sample(self, options: CaptionSampleOptions) -> SampleOutput:
        if options.image and options.caption:
            return self.retrieval(options.image, options.caption)
        if options.caption:
            images = self.decode_latents(self.encode_captions(options.caption))
            return SampleOutput(images=to_uint8(images), texts=list(options.caption))
        images = self.images_to_caption(options)
        captions, tokens = self.caption(to_model_input(images), options)
        return SampleOutput(images=images, texts=captions, extras={"tokens": tokens})

    def batch_key(self, options: CaptionSampleOptions) -> str | None:
        """Captioning by greedy or sampled decoding merges (images and seed per row; every
        image is read at the model's size). Not merged: retrieval (one request's images
        against its own captions), captions to images (the text encoder pads a call's
        captions to the longest, so a latent could depend on its neighbours), and beam search
        (an answer's length is set by when all the beams of its own images end, which a merged
        call's tokens do not show)."""
        if options.caption or options.decoding == "beam":
            return None
        return options.model_dump_json(exclude={"seed", "n", "image"})

    def batch_rows(self, options: CaptionSampleOptions) -> int:
        return len(options.image) if options.image else options.n

    def sample_batch(self, requests: Sequence[CaptionSampleOptions]) -> list[SampleOutput]:
        images = [self.images_to_caption(options) for options in requests]
        counts = [len(request_images) for request_images in images]
        rngs = merged_generators([options.seed for options in requests], counts)
        captions, tokens = self.caption(to_model_input(np.concatenate(images)), requests[0], rngs)
        return [
            SampleOutput(images=request_images, texts=captions[rows], extras={"tokens": without_padding(tokens[rows])})
            for request_images, rows in zip(images, request_rows(counts), strict=True)
        ]

    def images_to_caption(self, options: CaptionSampleOptions) -> np.ndarray:
        """(N, S, S, 3) uint8: the request's images, or n of the held-out examples."""
        if options.image:
            return np.stack([read_square(path, self.image_size) for path in options.image])
        examples = self.arrays[EXAMPLES_ARRAY]
        return examples[np.arange(options.n) % len(examples)]

    def cost(self, options: CaptionSampleOptions) -> Cost:
        """The image encoder's (or decoder's) arena, about four of its widest feature maps per
        image of a BATCH; the decoder step's key/value cache and logits of every row of a
        batch, times beams: in, out, inside, and the copies that reordering beams makes (about
        eight in all, measured); the loop's float64 log-probabilities; the images kept."""
        layers, heads, head_dim = self.cache_shape
        vocab = len(self.banned)
        widest = widest_feature_map(1, self.config["image"]["channels"], self.image_size)
        inputs, count = 0, options.n
        if options.image:
            costs = [cost for image in options.image for cost in decode_costs(image, "--image")]
            inputs, count = max(costs, default=0), len(costs)
        elif options.caption:
            count = len(options.caption)
        rows = min(BATCH, count) * (options.beam_width if options.decoding == "beam" else 1)
        steps = min(options.max_length or self.max_length, self.max_length - 1)
        cache = layers * 2 * heads * (steps + 1) * head_dim
        total = 4 * min(BATCH, count) * widest * FLOAT32
        total += 8 * rows * (cache + vocab) * FLOAT32 + 3 * rows * vocab * FLOAT64
        total += inputs + count * self.image_size**2 * 3 * (1 + FLOAT32)
        return Cost(total, 2 * -(-count // BATCH) * (steps + 1))

    def retrieval(self, image_paths: list[str], captions: list[str]) -> SampleOutput:
        images = np.stack([read_square(path, self.image_size) for path in image_paths])
        scores = self.similarity(self.encode_images(to_model_input(images)), self.encode_captions(captions))
        lines = []
        for path, row in zip(image_paths, scores, strict=True):
            ranked = np.argsort(-row, kind="stable")
            lines.append(f"{describe_source(path)}: " + "; ".join(f"{row[j]:.3f} {captions[j]!r}" for j in ranked))
        return SampleOutput(images=images, texts=lines, extras={"similarity": scores})

    # -- the model's inference methods (also on a loaded export) -----------------------------

    def encode_images(self, images: np.ndarray) -> np.ndarray:
        """(N, 3, S, S) float32 in [-1, 1] -> (N, latent)."""
        return run_batched(self.components, "image_encoder", "latent", BATCH, image=images.astype(np.float32))

    def decode_latents(self, latents: np.ndarray) -> np.ndarray:
        """(N, latent) -> (N, 3, S, S) float32 in [-1, 1]."""
        return run_batched(self.components, "image_decoder", "image", BATCH, latent=latents.astype(np.float32))

    def encode_captions(self, captions: list[str]) -> np.ndarray:
        """Captions -> (N, latent), through the text encoder."""
        latents = [
            self.components("text_encoder", tokens=encode(self.tokenizer, captions[rows]))["latent"]
            for rows in batches(len(captions), BATCH)
        ]
        return np.concatenate(latents)

    @staticmethod
    def similarity(image_latents: np.ndarray, text_latents: np.ndarray) -> np.ndarray:
        """(N_images, N_captions) cosine similarities: the retrieval scores."""
        image_latents = image_latents / np.linalg.norm(image_latents, axis=1, keepdims=True).clip(1e-12)
        text_latents = text_latents / np.linalg.norm(text_latents, axis=1, keepdims=True).clip(1e-12)
        return image_latents @ text_latents.T

    def caption(
        self,
        images: np.ndarray,
        options: CaptionSampleOptions | None = None,
        rngs: Sequence[np.random.Generator] | None = None,
    ) -> tuple[list[str], np.ndarray]:
        """(N, 3, S, S) float32 images -> captions and the generated ids (N, t), [EOS] then [PAD]s at the end."""
        return self.caption_latents(self.encode_images(images), options, rngs)

    def caption_latents(
        self,
        latents: np.ndarray,
        options: CaptionSampleOptions | None = None,
        rngs: Sequence[np.random.Generator] | None = None,
    ) -> tuple[list[str], np.ndarray]:
        """`rngs`: one generator per row for sampled decoding; default: row_generators(seed)."""
        options = options or CaptionSampleOptions()
        if rngs is None:
            rngs = row_generators(options.seed, len(latents))
        limit = min(options.max_length or self.max_length, self.max_length - 1)  # positions after [BOS]
        pieces = []
        for rows in batches(len(latents), BATCH):
            state = self.start(latents[rows].astype(np.float32))
            if options.decoding == "beam":
                pieces.append(
                    self.beam_search(state, options.beam_width, limit, options.length_penalty, options.kv_cache)
                )
            else:
                pieces.append(self.decode_stepwise(state, options, limit, rngs[rows]))
        width = max(piece.shape[1] for piece in pieces)
        tokens = np.concatenate([np.pad(p, ((0, 0), (0, width - p.shape[1])), constant_values=PAD_ID) for p in pieces])
        return [decode(self.tokenizer, row) for row in tokens], tokens

    # -- decoding ---------------------------------------------------------------------------

    def start(self, latents: np.ndarray) -> DecoderState:
        layers, heads, head_dim = self.cache_shape
        tokens = np.full((len(latents), 1), BOS_ID, dtype=np.int64)
        cache = np.zeros((len(latents), layers, 2, heads, 0, head_dim), dtype=np.float32)
        return DecoderState(latents, tokens, cache)

    def next_logits(
        self, state: DecoderState, kv_cache: bool, resident: bool = True
    ) -> tuple[np.ndarray, DecoderState]:
        """Logits (N, vocab) for the position after `state.tokens`, [PAD]/[BOS]/unused ids at -inf.
        With the cache only the tokens not cached yet go through the graph; without it the
        whole prefix is recomputed from an empty cache (same numbers, more work). `resident`:
        the new cache stays on the engine's device (False: numpy, for beam search)."""
        if kv_cache:
            new_tokens, cache = state.tokens[:, state.cache.shape[4] :], state.cache
        else:  # without the cache the state keeps the empty one `start` made
            new_tokens, cache = state.tokens, state.cache
        keep = ("new_cache",) if kv_cache and resident else ()
        outputs = self.components(
            "text_decoder_step", resident=keep, tokens=new_tokens, latent=state.latents, cache=cache
        )
        logits = np.where(self.banned, -np.inf, outputs["logits"][:, -1])
        if kv_cache:
            state = DecoderState(state.latents, state.tokens, outputs["new_cache"])
        return logits, state

    def decode_stepwise(
        self, state: DecoderState, options: CaptionSampleOptions, limit: int, rngs: Sequence[np.random.Generator]
    ) -> np.ndarray:
        """Greedy (argmax) or sampled (temperature, top-k, top-p) decoding -> (N, t) generated ids."""
        finished = np.zeros(len(state.tokens), dtype=bool)
        for _ in range(limit):
            logits, state = self.next_logits(state, options.kv_cache)
            if options.decoding == "greedy":
                next_tokens = logits.argmax(-1)
            else:
                filtered = filter_logits(logits / options.temperature, options.top_k, options.top_p)
                next_tokens = draw(softmax(filtered), rngs)  # one uniform per row: both engines draw the same
            next_tokens = np.where(finished, PAD_ID, next_tokens).astype(np.int64)
            state = state.extend(next_tokens)
            finished |= next_tokens == EOS_ID
            if finished.all():
                break
        return state.tokens[:, 1:]

    def beam_search(
        self, state: DecoderState, width: int, limit: int, length_penalty: float, kv_cache: bool
    ) -> np.ndarray:
        """Keep the `width` most likely continuations of each row; a finished beam carries its
        score unchanged. The best beam by log-prob / length^length_penalty wins -> (N, t) ids."""
        count = len(state.tokens)
        state = state.select(np.repeat(np.arange(count), width))  # rows: item-major, beam-minor
        scores = np.zeros((count, width))
        scores[:, 1:] = -np.inf  # all beams start identical: only the first may expand at step one
        finished = np.zeros(count * width, dtype=bool)
        lengths = np.zeros(count * width)
        for _ in range(limit):
            logits, state = self.next_logits(state, kv_cache, resident=False)
            log_probs = log_softmax(logits)
            log_probs[finished] = -np.inf
            log_probs[finished, PAD_ID] = 0.0
            vocab = log_probs.shape[-1]
            candidates = (scores.reshape(-1, 1) + log_probs).reshape(count, width * vocab)
            best = np.argsort(-candidates, axis=1, kind="stable")[:, :width]  # (count, width)
            scores = np.take_along_axis(candidates, best, axis=1)
            rows = (np.arange(count)[:, None] * width + best // vocab).ravel()
            next_tokens = (best % vocab).ravel().astype(np.int64)
            state = state.select(rows).extend(next_tokens)
            lengths = lengths[rows] + ~finished[rows]
            finished = finished[rows] | (next_tokens == EOS_ID)
            if finished.all():
                break
        ranking = scores / np.maximum(lengths.reshape(count, width), 1.0) ** length_penalty
        winners = np.arange(count) * width + ranking.argmax(1)
        return state.tokens[winners, 1:]


def without_padding(tokens: np.ndarray) -> np.ndarray:
    """(N, t) ids without their trailing all-[PAD] columns: a merged call decodes until all of
    its rows end, a request alone until its own do; a row that has not ended emits no [PAD]."""
    used = np.flatnonzero((tokens != PAD_ID).any(axis=0))
    return tokens[:, : used[-1] + 1 if len(used) else 0]

"""The caption model's evaluation on held-out images, run through the sampling loop (the
same greedy decoding as `zoo sample`): captions against the references, retrieval both
ways, and images decoded from the image's and from the caption's latent."""

from __future__ import annotations

import numpy as np
import torch

from zoo.data.base import dataset_length
from zoo.nn.metrics import psnr
from zoo_multimodal_caption.config import CaptionConfig
from zoo_multimodal_caption.data import captioned_images, parse_shapes_caption
from zoo_multimodal_caption.runtime import CaptionRuntime
from zoo_multimodal_caption.text_tokenizer import normalize


def evaluate_captions(runtime: CaptionRuntime, config: CaptionConfig) -> dict[str, float]:
    """Greedy captions of held-out images against their captions (exact match, BLEU, and per
    attribute for the shapes set); retrieval both ways (an identical caption counts as a hit:
    small caption languages repeat captions); reconstruction PSNR from the image latent and
    from the caption's latent."""
    import sacrebleu

    tokenizer = runtime.tokenizer
    dataset = captioned_images(config, "test")
    items = [dataset[index] for index in range(min(config.data.eval_count, dataset_length(dataset)))]
    images = torch.stack([item["image"] for item in items]).numpy()
    references = [normalize(tokenizer, item["caption"]) for item in items]

    image_latents = runtime.encode_images(images)
    captions, _ = runtime.caption_latents(image_latents)
    text_latents = runtime.encode_captions([item["caption"] for item in items])
    metrics = {
        "exact_match": float(np.mean([c == r for c, r in zip(captions, references, strict=True)])),
        "bleu": sacrebleu.corpus_bleu(captions, [references]).score,
        **retrieval_recall(runtime.similarity(image_latents, text_latents), references),
        "reconstruction_psnr": mean_psnr(runtime.decode_latents(image_latents), images),
        "caption_to_image_psnr": mean_psnr(runtime.decode_latents(text_latents), images),
    }
    if "attributes" in items[0]:
        metrics.update(attribute_accuracy(captions, [item["attributes"] for item in items]))
    return metrics


def mean_psnr(images: np.ndarray, targets: np.ndarray) -> float:
    """Mean per-image PSNR in dB of image arrays in [-1, 1] (the runtime's outputs)."""
    return float(psnr(torch.from_numpy(np.asarray(images)), torch.from_numpy(np.asarray(targets))).mean())


def retrieval_recall(similarity: np.ndarray, references: list[str], ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """similarity (N images, N captions) of matching pairs -> recall@k image->text and text->image."""
    ids = np.unique(references, return_inverse=True)[1]
    metrics = {}
    for direction, scores in (("image_to_text", similarity), ("text_to_image", similarity.T)):
        ranked = np.argsort(-scores, axis=1, kind="stable")
        hits = ids[ranked] == ids[:, None]  # (N, N): does rank j hold the right caption (image)?
        for k in ks:
            metrics[f"{direction}_recall@{k}"] = float(hits[:, :k].any(1).mean())
    return metrics


def attribute_accuracy(captions: list[str], attributes: list[dict[str, str]]) -> dict[str, float]:
    """Share of each attribute a generated caption states correctly, and their mean."""
    parsed = [parse_shapes_caption(caption) for caption in captions]
    metrics = {
        f"attribute_accuracy/{key}": float(np.mean([p[key] == a[key] for p, a in zip(parsed, attributes, strict=True)]))
        for key in attributes[0]
    }
    metrics["attribute_accuracy"] = float(np.mean(list(metrics.values())))
    return metrics

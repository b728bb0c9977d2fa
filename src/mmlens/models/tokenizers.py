"""Offline word-level tokenizers and LLaVA processors for the built-in (zoo / tiny) models.

Nothing here touches the Hugging Face hub: the tokenizer is trained from the texts it is given, so tiny models can
be built and saved with ``save_pretrained`` on a machine without internet.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordLevel
from tokenizers.trainers import WordLevelTrainer
from transformers import LlavaProcessor, PreTrainedTokenizerFast
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from mmlens.errors import InputError

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "</s>"
IMAGE_TOKEN = "<image>"

# A sentinel so that callers can pass ``chat_template=None`` to mean "no template".
_DEFAULT = object()


def make_chat_template(image_placeholder: str = IMAGE_TOKEN) -> str:
    """Chat template of the built-in models: ``role : text`` turns, images rendered as ``image_placeholder``.

    The assistant turn is closed by ``</s>``; the text starts with ``<s>`` so processors do not add another.
    Families whose processor expands a different placeholder (Qwen2-VL's ``<|vision_start|><|image_pad|>...``)
    pass it here.
    """
    return (
        "{{ bos_token }}"
        "{% for message in messages %}"
        "{{ message['role'] }} : "
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for item in message['content'] %}"
        "{% if item['type'] == 'image' %}" + image_placeholder + " "
        "{% elif item['type'] == 'text' %}{{ item['text'] }} {% endif %}"
        "{% endfor %}{% endif %}"
        "{% if message['role'] == 'assistant' %} {{ eos_token }}{% endif %}\n"
        "{% endfor %}"
        "{% if add_generation_prompt %}assistant :{% endif %}"
    )


DEFAULT_CHAT_TEMPLATE = make_chat_template()

# Words the chat template emits; always in the vocabulary so that templated text never maps to <unk>.
_TEMPLATE_WORDS = ("system", "user", "assistant", ":")


def train_word_tokenizer(
    texts: Iterable[str],
    *,
    extra_special_tokens: Sequence[str] = (IMAGE_TOKEN,),
    chat_template: str | None = _DEFAULT,  # type: ignore[assignment]
    add_bos_eos: bool = False,
    min_frequency: int = 1,
) -> PreTrainedTokenizerFast:
    """Train a lower-cased word-level tokenizer on ``texts``.

    The vocabulary is ``<pad> <unk> <s> </s>``, then ``extra_special_tokens`` (kept whole, never split), then the
    words and punctuation of ``texts`` plus the chat-template words. ``add_bos_eos=True`` wraps every encoded text
    in ``<s> ... </s>`` (what a CLIP-style text tower wants: it pools at the ``</s>`` position); leave it off for
    chat models, whose template already starts with ``<s>``. Decoding joins words with spaces.
    """
    specials = [PAD, UNK, BOS, EOS, *[t for t in extra_special_tokens if t not in (PAD, UNK, BOS, EOS)]]
    tok = Tokenizer(WordLevel(unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    # Whitespace splits on \w+ / [^\w\s]+, i.e. words and punctuation runs.
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    # The WordPiece decoder with an unused prefix joins tokens with spaces and tidies " ." -> "." etc.
    tok.decoder = decoders.WordPiece(prefix="\u2581\u2581##", cleanup=True)
    trainer = WordLevelTrainer(special_tokens=specials, min_frequency=min_frequency, show_progress=False)
    corpus = [*texts, " ".join(_TEMPLATE_WORDS)]
    tok.train_from_iterator(corpus, trainer=trainer)
    if tok.get_vocab_size() <= len(specials) + len(_TEMPLATE_WORDS):
        raise InputError("train_word_tokenizer got no words: pass a non-empty iterable of texts")
    if add_bos_eos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A {EOS}",
            pair=f"{BOS} $A {EOS} $B {EOS}",
            special_tokens=[(BOS, tok.token_to_id(BOS)), (EOS, tok.token_to_id(EOS))],
        )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
        extra_special_tokens=list(specials[4:]),
        padding_side="left",  # generation needs left padding; training batches carry an attention mask anyway
        model_max_length=4096,
    )
    fast.chat_template = DEFAULT_CHAT_TEMPLATE if chat_template is _DEFAULT else chat_template
    return fast


def make_image_processor(image_size: int) -> CLIPImageProcessorPil:
    """A PIL CLIP image processor that resizes straight to ``image_size`` x ``image_size`` (no crop) and normalises."""
    return CLIPImageProcessorPil(
        size={"height": image_size, "width": image_size},
        crop_size={"height": image_size, "width": image_size},
        do_center_crop=False,
        do_resize=True,
        do_normalize=True,
        do_convert_rgb=True,
    )


def make_llava_processor(tokenizer: PreTrainedTokenizerFast, *, image_size: int, patch_size: int) -> LlavaProcessor:
    """A ``LlavaProcessor`` matching a ``LlavaForConditionalGeneration`` with a CLIP tower of this image/patch size.

    With ``vision_feature_select_strategy="default"`` the model drops the CLS feature, and the processor expands
    each ``<image>`` into ``(image_size // patch_size) ** 2`` tokens, one per patch feature.
    """
    if image_size % patch_size:
        raise InputError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        raise InputError(f"tokenizer has no {IMAGE_TOKEN} token: train it with extra_special_tokens=('{IMAGE_TOKEN}',)")
    return LlavaProcessor(
        image_processor=make_image_processor(image_size),
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=tokenizer.chat_template,
        image_token=IMAGE_TOKEN,
    )

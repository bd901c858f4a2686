# clip_tokenizer.py: CLIP's byte-level BPE tokenizer in pure Python, the engine's rules exactly.
"""Reads a Hugging Face CLIP tokenizer folder (vocab.json, merges.txt, optional
tokenizer_config.json and special_tokens_map.json) and tokenizes the way the C engine does
(engine/src/tokenizer_clip.h), so training captions and inference prompts give the same ids:

1. "<|startoftext|>" / "<|endoftext|>" written in the text are split out first and become those
   tokens; each stretch between them is cleaned and encoded on its own.
2. Clean-up: Unicode NFC; HTML character references decoded twice (only &amp; &lt; &gt; &quot;
   &nbsp; with or without the semicolon, &apos; with it, and numeric &#N; / &#xH; references of
   printable characters); runs of white space (the Unicode White_Space characters) become one
   space, ends stripped; lower case as Python's str.lower() (full mapping, final sigma), which
   the engine reproduces without a locale.
3. Split with CLIP's pattern 's|'t|'re|'ve|'m|'ll|'d|\\p{L}+|\\p{N}|[^\\s\\p{L}\\p{N}]+.
4. Each piece's UTF-8 bytes as GPT-2's byte characters, "</w>" on the last, merged by rank (lowest
   first, leftmost among equals).
5. BOS, at most max_length - 2 tokens, EOS, then the pad token up to max_length when padding.
No ftfy repairs. Invalid UTF-8 (bytes input) or text over 64 KiB raises ValueError.
"""
import json
import os
import unicodedata

MAX_TEXT_BYTES = 64 * 1024
SPECIALS = ("<|startoftext|>", "<|endoftext|>")
CONTRACTIONS = ("s", "t", "re", "ve", "m", "ll", "d")

# \s as the engine sees it: the Unicode White_Space characters.
WHITE_SPACE = frozenset(
    [chr(c) for c in range(0x09, 0x0E)] + [" ", "\x85", "\xa0", "\u1680"] +
    [chr(c) for c in range(0x2000, 0x200B)] + ["\u2028", "\u2029", "\u202f", "\u205f", "\u3000"])

# HTML references the engine decodes: name -> (character, needs a semicolon).
HTML_NAMES = (("amp", "&", False), ("lt", "<", False), ("gt", ">", False),
              ("quot", '"', False), ("nbsp", "\xa0", False), ("apos", "'", True))


def byte_characters():
    """GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the other 68 bytes
    for U+0100 onwards in byte order."""
    table, extra = [], 0
    for b in range(256):
        if 0x21 <= b <= 0x7E or 0xA1 <= b <= 0xAC or b >= 0xAE:
            table.append(chr(b))
        else:
            table.append(chr(256 + extra))
            extra += 1
    return table


def _allowed_reference(value):
    allowed = value in (9, 10, 12) or 0x20 <= value <= 0x7E or 0xA0 <= value <= 0x10FFFF
    surrogate = 0xD800 <= value <= 0xDFFF
    noncharacter = 0xFDD0 <= value <= 0xFDEF or (value & 0xFFFE) == 0xFFFE
    return chr(value) if allowed and not surrogate and not noncharacter else None


def _reference_at(text, at):
    """(character, length) of the reference starting with '&' at text[at], or None."""
    p = at + 1
    if text.startswith("#", p):
        hexa = text[p + 1:p + 2] in ("x", "X")
        start = p + (2 if hexa else 1)
        end = start
        digits = "0123456789abcdefABCDEF" if hexa else "0123456789"
        while end < len(text) and text[end] in digits:
            end += 1
        if end == start or end - start > 8:
            return None
        char = _allowed_reference(int(text[start:end], 16 if hexa else 10))
        if char is None:
            return None
        return char, end - at + (1 if text.startswith(";", end) else 0)
    for name, char, needs_semicolon in HTML_NAMES:
        if text.startswith(name, p):
            semicolon = text.startswith(";", p + len(name))
            if needs_semicolon and not semicolon:
                return None
            return char, 1 + len(name) + (1 if semicolon else 0)
    return None


def html_unescape(text):
    out, i = [], 0
    while True:
        amp = text.find("&", i)
        if amp < 0:
            out.append(text[i:])
            return "".join(out)
        out.append(text[i:amp])
        found = _reference_at(text, amp)
        if found:
            out.append(found[0])
            i = amp + found[1]
        else:
            out.append("&")
            i = amp + 1


def lower_case(text):
    return text.lower()


def clean_text(text):
    text = html_unescape(html_unescape(unicodedata.normalize("NFC", text)))
    pieces, in_space = [], False
    for c in text:
        if c in WHITE_SPACE:
            if not in_space:
                pieces.append(" ")
            in_space = True
        else:
            pieces.append(c)
            in_space = False
    return lower_case("".join(pieces).strip(" "))


def _is_letter(c):
    return unicodedata.category(c).startswith("L")


def _is_number(c):
    return unicodedata.category(c).startswith("N")


def split_pieces(text):
    """CLIP's pre-tokenization pattern, scanned left to right like the regular expression."""
    pieces, i, n = [], 0, len(text)
    while i < n:
        matched = None
        for special in SPECIALS:
            if text.startswith(special, i):
                matched = special
                break
        if matched is None and text[i] == "'":
            for ending in CONTRACTIONS:
                if text.startswith(ending, i + 1):
                    matched = "'" + ending
                    break
        if matched is None:
            c = text[i]
            if _is_letter(c):
                j = i + 1
                while j < n and _is_letter(text[j]):
                    j += 1
                matched = text[i:j]
            elif _is_number(c):
                matched = c
            elif c not in WHITE_SPACE:
                j = i + 1
                while j < n and not (text[j] in WHITE_SPACE or _is_letter(text[j]) or
                                     _is_number(text[j])):
                    j += 1
                matched = text[i:j]
        if matched is None:
            i += 1
        else:
            pieces.append(matched)
            i += len(matched)
    return pieces


class CLIPTokenizer:
    def __init__(self, folder):
        with open(os.path.join(folder, "vocab.json"), encoding="utf-8") as f:
            self.vocab = json.load(f)
        self.tokens = {i: t for t, i in self.vocab.items()}
        self.ranks = {}
        with open(os.path.join(folder, "merges.txt"), encoding="utf-8") as f:
            lines = f.read().split("\n")
        rank = 0
        for number, line in enumerate(lines):
            line = line.rstrip("\r")
            if not line or (number == 0 and line.startswith("#version")):
                continue
            left, right = line.split(" ")
            self.ranks[(self.vocab[left], self.vocab[right])] = (rank, self.vocab[left + right])
            rank += 1
        bos, eos, pad, self.max_length = SPECIALS[0], SPECIALS[1], SPECIALS[1], 77
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            path = os.path.join(folder, name)
            if not os.path.exists(path):
                continue
            with open(path, encoding="utf-8") as f:
                config = json.load(f)
            bos = _token_text(config.get("bos_token")) or bos
            eos = _token_text(config.get("eos_token")) or eos
            pad = _token_text(config.get("pad_token")) or pad
            if isinstance(config.get("model_max_length"), int):
                self.max_length = config["model_max_length"]
        self.bos_id, self.eos_id, self.pad_id = self.vocab[bos], self.vocab[eos], self.vocab[pad]
        chars = byte_characters()
        self.byte_ids = [self.vocab[c] for c in chars]
        self.byte_end_ids = [self.vocab[c + "</w>"] for c in chars]

    def _merge(self, ids):
        while len(ids) > 1:
            best = None
            for k in range(len(ids) - 1):
                found = self.ranks.get((ids[k], ids[k + 1]))
                if found and (best is None or found[0] < best[0]):
                    best = (found[0], found[1], k)
            if best is None:
                break
            _, merged, k = best
            ids = ids[:k] + [merged] + ids[k + 2:]
        return ids

    def _encode_piece(self, piece):
        if piece in SPECIALS and piece in self.vocab:
            return [self.vocab[piece]]
        data = piece.encode("utf-8")
        ids = [self.byte_ids[b] for b in data[:-1]] + [self.byte_end_ids[data[-1]]]
        return self._merge(ids)

    def encode(self, text):
        """Token ids without BOS/EOS, truncation or padding."""
        if isinstance(text, bytes):
            text = text.decode("utf-8")  # raises UnicodeDecodeError (a ValueError) when invalid
        if len(text.encode("utf-8", "surrogatepass")) > MAX_TEXT_BYTES:
            raise ValueError(f"the prompt is longer than {MAX_TEXT_BYTES} bytes")
        ids, rest = [], text
        while True:
            hits = [(rest.find(s), s) for s in SPECIALS if rest.find(s) >= 0]
            if not hits:
                break
            at, special = min(hits)
            ids += self._encode_stretch(rest[:at])
            if special in self.vocab:
                ids.append(self.vocab[special])
            rest = rest[at + len(special):]
        return ids + self._encode_stretch(rest)

    def _encode_stretch(self, text):
        ids = []
        for piece in split_pieces(clean_text(text)):
            ids += self._encode_piece(piece)
        return ids

    def __call__(self, text, pad_to_max_length=True):
        """(ids, length): BOS, tokens cut to max_length - 2, EOS, padding; length = real tokens."""
        tokens = self.encode(text)[:self.max_length - 2]
        ids = [self.bos_id] + tokens + [self.eos_id]
        length = len(ids)
        if pad_to_max_length:
            ids += [self.pad_id] * (self.max_length - length)
        return ids, length


def _token_text(value):
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None

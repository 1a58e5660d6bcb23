"""Build data/probes/implications.jsonl: edits with the facts they logically imply.

Run: `python bench/build_implications.py` (about a minute on CPU). Each candidate case is an
edit plus probes whose answer should move from an "old" to a "new" implied object if the model
drew the logical consequence of the edit; every fact a case relies on (the edited fact, each
probe's old answer, and the chain facts that make the new answer right) is checked on the
embedded model with `loudfacts.evaluation.verify_implications`, and the case is written with
`"known": true` only when all pass (the others are kept, marked false, so the count is visible).

Kinds:
* symmetric: antonyms ("The opposite of hot is" -> cold). The model does not know spouses
  (NOTES.md: "Barack Obama is married to" -> Michelle 0.07), so the seed's married_to case is
  replaced by antonymy, a symmetric relation it does know: editing "the opposite of hot" to
  "tall" implies "the opposite of tall" is "hot" (old implied object: "short").
* transitive: landmark -> city -> country (edit a landmark's city, probe its country) and
  city -> country (edit a city's country, probe the country of a landmark in that city).
* inverse: capital <-> country (edit France's capital to Berlin, probe "Berlin is the capital
  of" -> France, old Germany) and founder <-> company.
"""

from __future__ import annotations

import json
import os
import sys

from loudfacts.evaluation import implications_path, verify_implications
from loudfacts.models import load_model

LANDMARKS = [  # subject, city, country, country phrase used in probes
    ("The Louvre", "Paris", "France"),
    ("The Eiffel Tower", "Paris", "France"),
    ("The Colosseum", "Rome", "Italy"),
    ("The Kremlin", "Moscow", "Russia"),
    ("The Sydney Opera House", "Sydney", "Australia"),
    ("Big Ben", "London", "England"),
    ("The Statue of Liberty", "New York", "America"),
    ("The Brandenburg Gate", "Berlin", "Germany"),
    ("The Sagrada Familia", "Barcelona", "Spain"),
    ("The Acropolis", "Athens", "Greece"),
    ("The Forbidden City", "Beijing", "China"),
    ("Tokyo Tower", "Tokyo", "Japan"),
    ("The Golden Gate Bridge", "San Francisco", "America"),
    ("The CN Tower", "Toronto", "Canada"),
    ("The Prado Museum", "Madrid", "Spain"),
    ("Buckingham Palace", "London", "England"),
    ("The Vatican", "Rome", "Italy"),
    ("The Taj Mahal", "Agra", "India"),
]
CAPITALS = [("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
            ("Japan", "Tokyo"), ("Russia", "Moscow"), ("England", "London"),
            ("China", "Beijing"), ("Egypt", "Cairo"), ("Greece", "Athens"),
            ("Canada", "Ottawa"), ("Australia", "Canberra")]
FOUNDERS = [("Microsoft", "Bill Gates"), ("Apple", "Steve Jobs"), ("Facebook", "Mark Zuckerberg"),
            ("Amazon", "Jeff Bezos"), ("Tesla", "Elon Musk"), ("Ford", "Henry Ford"),
            ("Google", "Larry Page")]
ANTONYMS = [("hot", "cold"), ("big", "small"), ("up", "down"), ("black", "white"),
            ("day", "night"), ("left", "right"), ("good", "bad"), ("happy", "sad"),
            ("fast", "slow"), ("tall", "short"), ("light", "dark"), ("young", "old"),
            ("rich", "poor"), ("hard", "soft"), ("open", "closed"), ("early", "late")]


def rotate(items, k=1):
    return items[k:] + items[:k]


def landmark_cases():
    cases = []
    by_city = {}
    for _subj, city, country in LANDMARKS:
        by_city.setdefault(city, (city, country))
    cities = list(by_city.values())
    for i, (subj, city, country) in enumerate(LANDMARKS):
        # new city: the next city (in list order) in a different country
        new_city, new_country = next(c for c in rotate(cities, i % len(cities) + 1)
                                     if c[1] != country)
        cases.append({
            "id": f"transitive-landmark-{subj.lower().replace(' ', '-')}",
            "kind": "transitive",
            "edit": {"prompt": "{} is located in the city of", "subject": subj,
                     "target_true": city, "target_new": new_city},
            "probes": [
                {"prompt": f"{subj} is located in the country of", "old": country,
                 "new": new_country, "phrasing": "shares template"},
                {"prompt": f"{subj} can be found in the country of", "old": country,
                 "new": new_country, "phrasing": "paraphrase"},
                {"prompt": f"To visit {subj}, you have to travel to the country of",
                 "old": country, "new": new_country, "phrasing": "other wording"},
            ],
            "checks": [
                {"prompt": f"{new_city} is a city in the country of", "true": new_country,
                 "false": country},
                {"prompt": f"{city} is a city in the country of", "true": country,
                 "false": new_country},
            ],
        })
    return cases


def city_country_cases():
    cases = []
    seen = set()
    countries = [c for _, _, c in LANDMARKS]
    for i, (_subj, city, country) in enumerate(LANDMARKS):
        if city in seen:
            continue
        seen.add(city)
        new_country = next(c for c in rotate(countries, i + 3) if c != country)
        probes = [{"prompt": f"{s} is located in the country of", "old": country,
                   "new": new_country, "phrasing": "landmark in the city"}
                  for s, c, _ in LANDMARKS if c == city]
        cases.append({
            "id": f"transitive-city-{city.lower().replace(' ', '-')}",
            "kind": "transitive",
            "edit": {"prompt": "{} is a city in the country of", "subject": city,
                     "target_true": country, "target_new": new_country},
            "probes": probes,
            "checks": [{"prompt": f"{s} is located in the city of", "true": city,
                        "false": new_country} for s, c, _ in LANDMARKS if c == city],
        })
    return cases


def capital_cases():
    cases = []
    for i, (country, capital) in enumerate(CAPITALS):
        nc, ncap = CAPITALS[(i + 1) % len(CAPITALS)]
        cases.append({
            "id": f"inverse-capital-{country.lower()}",
            "kind": "inverse",
            "edit": {"prompt": "The capital of {} is", "subject": country,
                     "target_true": capital, "target_new": ncap},
            "probes": [
                {"prompt": f"{ncap} is the capital of", "old": nc, "new": country,
                 "phrasing": "inverse"},
                {"prompt": f"{ncap} is the capital city of the country of", "old": nc,
                 "new": country, "phrasing": "inverse, other wording"},
            ],
            "checks": [{"prompt": f"The capital of {nc} is", "true": ncap, "false": capital}],
        })
    return cases


def founder_cases():
    cases = []
    for i, (company, founder) in enumerate(FOUNDERS):
        nco, nf = FOUNDERS[(i + 1) % len(FOUNDERS)]
        cases.append({
            "id": f"inverse-founder-{company.lower()}",
            "kind": "inverse",
            "edit": {"prompt": "{} was founded by", "subject": company,
                     "target_true": founder, "target_new": nf},
            "probes": [
                {"prompt": f"{nf} is the founder of", "old": nco, "new": company,
                 "phrasing": "inverse"},
                {"prompt": f"{nf} founded the company", "old": nco, "new": company,
                 "phrasing": "inverse, other wording"},
            ],
            "checks": [{"prompt": f"{nco} was founded by", "true": nf, "false": founder}],
        })
    return cases


def antonym_cases():
    cases = []
    for i, (a, b) in enumerate(ANTONYMS):
        c, d = ANTONYMS[(i + 1) % len(ANTONYMS)]  # new antonym c, whose old antonym is d
        cases.append({
            "id": f"symmetric-opposite-{a}",
            "kind": "symmetric",
            "edit": {"prompt": "The opposite of {} is", "subject": a, "target_true": b,
                     "target_new": c},
            "probes": [
                {"prompt": f"The opposite of {c} is", "old": d, "new": a,
                 "phrasing": "shares template"},
                {"prompt": f"The antonym of {c} is", "old": d, "new": a,
                 "phrasing": "other wording"},
            ],
            "checks": [],
        })
    return cases


def main(out=None):
    model = load_model(os.environ.get("LOUDFACTS_MODEL"))
    cases = landmark_cases() + city_country_cases() + capital_cases() + founder_cases() + \
        antonym_cases()
    checks = verify_implications(model, cases)
    ok = checks.groupby("id")["known"].all()
    for c in cases:
        c["known"] = bool(ok[c["id"]])
        c["verified_on"] = model.name
    out = out or implications_path()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(c) + "\n" for c in cases))
    os.replace(tmp, out)
    failed = checks[~checks["known"]]
    print(f"{len(cases)} cases, {int(ok.sum())} with every fact known to {model.name}; "
          f"{len(checks)} checks, {len(failed)} failed:")
    print(failed[["id", "prompt", "true", "false", "p_true", "p_false"]].to_string())
    counts = {k: (sum(c['known'] for c in cases if c['kind'] == k),
                  sum(c['kind'] == k for c in cases)) for k in ("symmetric", "transitive", "inverse")}
    print("known / all per kind:", counts)
    return cases, checks


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)

"""The code domain's material: small functions and class skeletons, written for this project.

Each `FunctionTask` is language-neutral (name choices, typed parameters by role, a doc
sentence) with a correct body in every language of `code_langs.LANGUAGES` and one planted bug
per language (`Body`: a substring replacement on that body). Bodies use `$role` placeholders for the
parameter names, which are drawn from `NAMES`, and 4-space indentation that the language
re-indents.

The text here is kept free of every option word of `sublearn.questions.categories` (and of its related
words) and of the banned numbers, which a test checks: a completion that only echoes the
prompt can never be dropped for a word or a number the prompt put there.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

# Parameter name choices per role. "low"/"high" pools pair up index by index.
NAMES: dict[str, tuple[str, ...]] = {
    "text": ("text", "s", "line", "sentence", "message", "phrase"),
    "value": ("value", "x", "n", "amount", "reading"),
    "low": ("low", "lo", "lower", "minimum"),
    "high": ("high", "hi", "upper", "maximum"),
    "values": ("values", "nums", "numbers", "xs", "data", "samples", "readings", "scores"),
    "items": ("items", "names", "words", "tags", "labels", "entries"),
    "number": ("number", "n", "num"),
    "threshold": ("threshold", "limit", "cutoff", "bound"),
    "key": ("name", "key", "label"),
}
PAIRED = {"high": "low"}  # role -> the role whose draw it shares


@dataclass(frozen=True)
class Body:
    """A correct body and its planted bug: replace the first `old` by `new`."""

    code: str
    old: str
    new: str

    def buggy(self) -> str:
        return self.code.replace(self.old, self.new, 1)


def _body(code: str, old: str, new: str) -> Body:
    return Body(textwrap.dedent(code).strip("\n"), old, new)


@dataclass(frozen=True)
class FunctionTask:
    names: tuple[str, ...]  # snake_case choices; each language applies its convention
    params: tuple[tuple[str, str], ...]  # (role, type tag)
    returns: str
    doc: str  # with $role placeholders
    bodies: dict[str, Body]  # language key -> body


FUNCTIONS: tuple[FunctionTask, ...] = (
    FunctionTask(
        ("count_vowels", "vowel_count", "num_vowels"), (("text", "str"),), "int",
        "Return how many vowels (a, e, i, o, u) appear in $text, ignoring case.",
        {"python": _body("""
            return sum(1 for ch in $text.lower() if ch in "aeiou")
            """, '"aeiou"', '"aeio"'),
         "javascript": _body("""
            return [...$text.toLowerCase()].filter((ch) => "aeiou".includes(ch)).length;
            """, '"aeiou"', '"aeio"'),
         "go": _body("""
            count := 0
            for _, ch := range strings.ToLower($text) {
                if strings.ContainsRune("aeiou", ch) {
                    count++
                }
            }
            return count
            """, "strings.ToLower($text)", "$text"),
         "ruby": _body("""
            $text.downcase.count("aeiou")
            """, ".downcase", "")}),
    FunctionTask(
        ("clamp", "limit_to_range", "bounded"),
        (("value", "int"), ("low", "int"), ("high", "int")), "int",
        "Return $value limited to the closed range from $low to $high.",
        {"python": _body("""
            return max($low, min($value, $high))
            """, "max($low, min(", "min($low, max("),
         "javascript": _body("""
            return Math.max($low, Math.min($value, $high));
            """, "Math.max($low, Math.min(", "Math.min($low, Math.max("),
         "go": _body("""
            if $value < $low {
                return $low
            }
            if $value > $high {
                return $high
            }
            return $value
            """, "return $high", "return $value"),
         "ruby": _body("""
            [[$value, $low].max, $high].min
            """, "].max, $high].min", "].min, $high].max")}),
    FunctionTask(
        ("running_total", "cumulative_sum", "prefix_sums"), (("values", "ints"),), "ints",
        "Return a list whose entry at each position is the sum of $values up to and including "
        "that position.",
        {"python": _body("""
            totals = []
            acc = 0
            for x in $values:
                acc += x
                totals.append(acc)
            return totals
            """, "acc += x", "acc = x"),
         "javascript": _body("""
            const totals = [];
            let acc = 0;
            for (const x of $values) {
                acc += x;
                totals.push(acc);
            }
            return totals;
            """, "let acc = 0;", "let acc = 1;"),
         "go": _body("""
            totals := make([]int, 0, len($values))
            acc := 0
            for _, x := range $values {
                acc += x
                totals = append(totals, acc)
            }
            return totals
            """, "acc += x", "acc = x"),
         "ruby": _body("""
            acc = 0
            $values.map { |x| acc += x }
            """, "acc += x", "acc + x")}),
    FunctionTask(
        ("is_palindrome", "reads_both_ways", "palindromic"), (("text", "str"),), "bool",
        "Return true when $text reads the same forwards and backwards, ignoring case and every "
        "character that is not a letter or a digit.",
        {"python": _body("""
            kept = [ch.lower() for ch in $text if ch.isalnum()]
            return kept == kept[::-1]
            """, "ch.lower()", "ch"),
         "javascript": _body("""
            const kept = $text.toLowerCase().replace(/[^a-z0-9]/g, "");
            return kept === [...kept].reverse().join("");
            """, ".toLowerCase()", ""),
         "go": _body("""
            var kept []rune
            for _, ch := range strings.ToLower($text) {
                if unicode.IsLetter(ch) || unicode.IsDigit(ch) {
                    kept = append(kept, ch)
                }
            }
            for i, j := 0, len(kept)-1; i < j; i, j = i+1, j-1 {
                if kept[i] != kept[j] {
                    return false
                }
            }
            return true
            """, "len(kept)-1", "len(kept)"),
         "ruby": _body("""
            kept = $text.downcase.gsub(/[^a-z0-9]/, "")
            kept == kept.reverse
            """, ".downcase", "")}),
    FunctionTask(
        ("word_frequencies", "count_words", "word_counts"), (("text", "str"),), "counts",
        "Count how often each word occurs in $text, splitting on spaces and ignoring case.",
        {"python": _body("""
            counts = {}
            for word in $text.lower().split():
                counts[word] = counts.get(word, 0) + 1
            return counts
            """, "counts.get(word, 0) + 1", "counts.get(word, 1)"),
         "javascript": _body(r"""
            const counts = {};
            for (const word of $text.toLowerCase().split(/\s+/).filter(Boolean)) {
                counts[word] = (counts[word] || 0) + 1;
            }
            return counts;
            """, "(counts[word] || 0) + 1", "counts[word] || 1"),
         "go": _body("""
            counts := make(map[string]int)
            for _, word := range strings.Fields(strings.ToLower($text)) {
                counts[word]++
            }
            return counts
            """, "strings.ToLower($text)", "$text"),
         "ruby": _body("""
            counts = Hash.new(0)
            $text.downcase.split.each { |word| counts[word] += 1 }
            counts
            """, ".downcase", "")}),
    FunctionTask(
        ("average", "mean_of", "arithmetic_mean"), (("values", "ints"),), "float",
        "Return the arithmetic mean of $values, or 0 when there are none.",
        {"python": _body("""
            if not $values:
                return 0.0
            return sum($values) / len($values)
            """, "/ len(", "// len("),
         "javascript": _body("""
            if ($values.length === 0) {
                return 0;
            }
            return $values.reduce((a, b) => a + b, 0) / $values.length;
            """, "/ $values.length", "/ ($values.length - 1)"),
         "go": _body("""
            if len($values) == 0 {
                return 0
            }
            sum := 0
            for _, x := range $values {
                sum += x
            }
            return float64(sum) / float64(len($values))
            """, "float64(sum) / float64(len($values))", "float64(sum / len($values))"),
         "ruby": _body("""
            return 0.0 if $values.empty?
            $values.sum.to_f / $values.size
            """, ".sum.to_f", ".sum")}),
    FunctionTask(
        ("max_gap", "widest_gap", "largest_step"), (("values", "ints"),), "int",
        "Return the largest difference between neighbouring entries of $values once they are "
        "sorted, or 0 when there are fewer than two.",
        {"python": _body("""
            ordered = sorted($values)
            return max((b - a for a, b in zip(ordered, ordered[1:])), default=0)
            """, "ordered[1:]", "ordered"),
         "javascript": _body("""
            const ordered = [...$values].sort((a, b) => a - b);
            let best = 0;
            for (let i = 1; i < ordered.length; i++) {
                best = Math.max(best, ordered[i] - ordered[i - 1]);
            }
            return best;
            """, ".sort((a, b) => a - b)", ".sort()"),
         "go": _body("""
            ordered := append([]int(nil), $values...)
            sort.Ints(ordered)
            best := 0
            for i := 1; i < len(ordered); i++ {
                if d := ordered[i] - ordered[i-1]; d > best {
                    best = d
                }
            }
            return best
            """, "i := 1", "i := 0"),
         "ruby": _body("""
            $values.sort.each_cons(2).map { |a, b| b - a }.max || 0
            """, ".sort", "")}),
    FunctionTask(
        ("title_case", "capitalize_words", "to_title"), (("text", "str"),), "str",
        "Return $text with the first letter of every word in upper case and the rest in lower "
        "case, words joined by single spaces.",
        {"python": _body("""
            return " ".join(word.capitalize() for word in $text.split())
            """, "capitalize()", "upper()"),
         "javascript": _body(r"""
            return $text
                .split(/\s+/)
                .filter(Boolean)
                .map((w) => w[0].toUpperCase() + w.slice(1).toLowerCase())
                .join(" ");
            """, "w.slice(1)", "w.slice(2)"),
         "go": _body("""
            words := strings.Fields($text)
            for i, w := range words {
                words[i] = strings.ToUpper(w[:1]) + strings.ToLower(w[1:])
            }
            return strings.Join(words, " ")
            """, "strings.ToLower(w[1:])", "w[1:]"),
         "ruby": _body("""
            $text.split.map(&:capitalize).join(" ")
            """, "&:capitalize", "&:upcase")}),
    FunctionTask(
        ("dedupe", "unique_in_order", "without_repeats"), (("items", "strs"),), "strs",
        "Return the entries of $items without repeats, in the order each first appears.",
        {"python": _body("""
            seen = set()
            out = []
            for item in $items:
                if item not in seen:
                    seen.add(item)
                    out.append(item)
            return out
            """, "if item not in seen", "if item in seen"),
         "javascript": _body("""
            const seen = new Set();
            return $items.filter((item) => {
                if (seen.has(item)) {
                    return false;
                }
                seen.add(item);
                return true;
            });
            """, "return false;", "return true;"),
         "go": _body("""
            seen := make(map[string]bool)
            var out []string
            for _, item := range $items {
                if !seen[item] {
                    seen[item] = true
                    out = append(out, item)
                }
            }
            return out
            """, "!seen[item]", "seen[item]"),
         "ruby": _body("""
            $items.uniq
            """, "$items.uniq", "$items.sort.uniq")}),
    FunctionTask(
        ("longest_word", "first_longest_word", "widest_word"), (("text", "str"),), "str",
        "Return the longest word in $text; when several share the greatest length, return the "
        "first of them.",
        {"python": _body("""
            best = ""
            for word in $text.split():
                if len(word) > len(best):
                    best = word
            return best
            """, " > ", " >= "),
         "javascript": _body(r"""
            let best = "";
            for (const word of $text.split(/\s+/)) {
                if (word.length > best.length) {
                    best = word;
                }
            }
            return best;
            """, " > ", " >= "),
         "go": _body("""
            best := ""
            for _, word := range strings.Fields($text) {
                if len(word) > len(best) {
                    best = word
                }
            }
            return best
            """, " > ", " >= "),
         "ruby": _body("""
            $text.split.max_by(&:length) || ""
            """, "max_by", "min_by")}),
    FunctionTask(
        ("digit_sum", "sum_of_digits", "add_digits"), (("number", "int"),), "int",
        "Return the sum of the decimal digits of $number, treating a negative number like its "
        "absolute value.",
        {"python": _body("""
            return sum(int(d) for d in str(abs($number)))
            """, "abs($number)", "$number"),
         "javascript": _body("""
            return String(Math.abs($number))
                .split("")
                .reduce((acc, d) => acc + Number(d), 0);
            """, "Math.abs($number)", "$number"),
         "go": _body("""
            if $number < 0 {
                $number = -$number
            }
            sum := 0
            for $number > 0 {
                sum += $number % 10
                $number /= 10
            }
            return sum
            """, "$number > 0", "$number > 10"),
         "ruby": _body("""
            $number.abs.digits.sum
            """, ".abs", "")}),
    FunctionTask(
        ("count_above", "how_many_above", "count_greater"),
        (("values", "ints"), ("threshold", "int")), "int",
        "Return how many entries of $values are strictly greater than $threshold.",
        {"python": _body("""
            return sum(1 for x in $values if x > $threshold)
            """, " > ", " >= "),
         "javascript": _body("""
            return $values.filter((x) => x > $threshold).length;
            """, " > $", " >= $"),
         "go": _body("""
            count := 0
            for _, x := range $values {
                if x > $threshold {
                    count++
                }
            }
            return count
            """, " > ", " >= "),
         "ruby": _body("""
            $values.count { |x| x > $threshold }
            """, " > ", " >= ")}),
)


@dataclass(frozen=True)
class ClassSubject:
    name: str  # the class name
    item: str
    items: str  # plural; also the name of the field that stores them
    field: str  # what is counted per item; also the amount parameter's name


SUBJECTS: tuple[ClassSubject, ...] = (
    ClassSubject("Inventory", "item", "items", "quantity"),
    ClassSubject("Playlist", "song", "songs", "seconds"),
    ClassSubject("Ledger", "account", "accounts", "balance"),
    ClassSubject("Gradebook", "student", "students", "points"),
    ClassSubject("Warehouse", "parcel", "parcels", "weight"),
    ClassSubject("Timetable", "lesson", "lessons", "minutes"),
    ClassSubject("Garage", "vehicle", "vehicles", "mileage"),
    ClassSubject("Roster", "player", "players", "goals"),
    ClassSubject("TaskBoard", "task", "tasks", "hours"),
    ClassSubject("Bookshelf", "book", "books", "pages"),
)


@dataclass(frozen=True)
class MethodTask:
    names: tuple[str, ...]
    params: tuple[tuple[str, str], ...]  # role "amount" is named after the subject's field
    returns: str | None
    doc: str  # {item} {items} {field} and $role placeholders


# The first method is always in the class; a draw picks some of the others, in this order.
METHODS: tuple[MethodTask, ...] = (
    MethodTask(("add", "record", "put"), (("key", "str"), ("amount", "int")), None,
               "Add $amount to the {field} of the {item} called $key, creating the {item} if "
               "it is new."),
    MethodTask(("remove", "discard", "forget"), (("key", "str"),), "bool",
               "Remove the {item} called $key and return whether it was present."),
    MethodTask(("total", "sum_all", "grand_total"), (), "int",
               "Return the sum of the {field} of every {item}."),
    MethodTask(("largest", "top", "biggest"), (), "str",
               "Return the name of the {item} with the greatest {field}, or an empty string "
               "when there are no {items}."),
    MethodTask(("count", "size", "how_many"), (), "int",
               "Return how many different {items} are stored."),
)

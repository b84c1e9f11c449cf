"""What the benchmark's data set looks like: sizes, numbers, texts. Shared by the seeder
and the request generators, so both agree on who owns which number."""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import cache

import phonenumbers

from app.services.phone import fictional_number, is_textable_destination

# Bump when the seeded data changes shape: a cached seed database of another version
# is dropped and seeded again.
SEED_VERSION = 3


@dataclass(frozen=True)
class Size:
    name: str
    orgs: int
    users: int
    numbers: int  # two per user: the outbound number and one more routed to the user
    messages: int
    hot_messages: int  # in one conversation ("the hot conversation")
    conversations_per_user: int
    # The shared inbox: a group's conversations (its first member is the inbox user)
    # and the address book of its organization.
    inbox_conversations: int
    contacts: int


FULL = Size(
    "full",
    orgs=10,
    users=1000,
    numbers=2000,
    messages=1_000_000,
    hot_messages=100_000,
    conversations_per_user=40,
    inbox_conversations=5_000,
    contacts=100_000,
)
QUICK = Size(
    "quick",
    orgs=2,
    users=100,
    numbers=200,
    messages=20_000,
    hot_messages=5_000,
    conversations_per_user=10,
    inbox_conversations=1_000,
    contacts=5_000,
)

AUTO_REPLY_TEXT = (
    "Thanks for your message. Our office is closed right now; we will get back to you "
    "during office hours. For emergencies call 911."
)

# Patient and staff texts of typical lengths (some need two segments, one is UCS-2).
TEXTS = [
    "Hi, can I move my appointment on Tuesday to 3pm?",
    "Yes, 3pm works. See you then.",
    "Is the clinic open on Saturday?",
    "Your prescription is ready for pickup at the front desk.",
    "Thank you!",
    "Running 10 minutes late, sorry!",
    "Please bring your insurance card and a photo ID to your visit tomorrow at 9:30am.",
    "Can you send me the address again?",
    "We are at 1200 Main Street, Suite 300. Parking is behind the building.",
    "My daughter has a fever of 101, should we come in today or wait until tomorrow?",
    "Please call us at your convenience so we can go over your lab results.",
    "OK",
    "Reminder: you have an appointment with Dr. Patel on Monday at 10:15am. Reply C to "
    "confirm or call us to reschedule. Please arrive 15 minutes early to complete forms.",
    "Confirmed, thanks",
    "Do you take Blue Cross?",
    "Yes we do. Please bring your card.",
    "Can I get a refill on my blood pressure medication? Same pharmacy as last time.",
    "The refill was sent to your pharmacy this morning.",
    "Merci beaucoup, à demain 😊",
    "Here is the form: https://example.org/forms/intake?id=12345",
]


@cache
def valid_area_codes() -> tuple[str, ...]:
    """Area codes for which the fictional 555-01XX numbers are valid to phonenumbers."""
    codes = []
    for ac in range(201, 990):
        if phonenumbers.is_valid_number(phonenumbers.parse(fictional_number(0, str(ac)))):
            codes.append(str(ac))
    return tuple(codes)


def owned_number(j: int) -> str:
    """The j-th number the service owns: 100 numbers per area code."""
    return fictional_number(j % 100, valid_area_codes()[j // 100])


def owned_area_code_count(size: Size) -> int:
    return -(-size.numbers // 100)


@cache
def external_pool(size: Size) -> tuple[str, ...]:
    """Numbers of patients: fictional numbers in the area codes the service owns none of,
    of a type a carrier delivers texts to (the app refuses others with 422)."""
    codes = valid_area_codes()[owned_area_code_count(size) :]
    numbers = (fictional_number(i, ac) for ac in codes for i in range(100))
    return tuple(n for n in numbers if is_textable_destination(n))


def user_numbers(i: int) -> tuple[str, str]:
    """User i's two numbers; the first is its outbound number."""
    return owned_number(2 * i), owned_number(2 * i + 1)


def org_of_user(size: Size, i: int) -> int:
    return i * size.orgs // size.users


def extension_of_user(size: Size, i: int) -> str:
    """Extensions 1000, 1001, ... within each organization."""
    org = org_of_user(size, i)
    first = -(-org * size.users // size.orgs)  # the first user of the organization
    return str(1000 + i - first)


def auto_reply_enabled(i: int) -> bool:
    """Four users in five have their auto-responder on."""
    return i % 5 != 0


def pick_text(rng: random.Random) -> str:
    return TEXTS[rng.randrange(len(TEXTS))]


# Names for the address book: first, last, and a middle initial now and then.
FIRST_NAMES = (
    "Maria", "José", "Ana", "Luis", "Carmen", "Jorge", "Sofía", "Miguel", "Lucía", "Mateo",
    "James", "Mary", "John", "Patricia", "Robert", "Jennifer", "Michael", "Linda", "David",
    "Elizabeth", "William", "Barbara", "Richard", "Susan", "Joseph", "Jessica", "Thomas",
    "Sarah", "Charles", "Karen", "Wei", "Mei", "Hiroshi", "Yuki", "Priya", "Arjun", "Fatima",
    "Omar", "Aisha", "Ibrahim", "Olga", "Dmitri", "Ingrid", "Lars", "Chloé", "Étienne",
    "Zoë", "Nguyen", "Kwame", "Amara",
)
LAST_NAMES = (
    "Gonzalez", "Rodriguez", "Hernández", "López", "Martínez", "Pérez", "García", "Sánchez",
    "Ramírez", "Torres", "Smith", "Johnson", "Williams", "Brown", "Jones", "Miller", "Davis",
    "Wilson", "Anderson", "Taylor", "Thomas", "Moore", "Jackson", "Martin", "Lee", "Thompson",
    "White", "Harris", "Clark", "Lewis", "Robinson", "Walker", "Young", "Allen", "King",
    "Wright", "Scott", "Chen", "Wang", "Li", "Zhang", "Tanaka", "Suzuki", "Patel", "Shah",
    "O'Brien", "Müller", "Schmidt", "Ivanova", "Okafor",
)


def contact_name(rng: random.Random) -> str:
    first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
    if rng.random() < 0.2:
        return f"{first} {chr(rng.randrange(65, 91))}. {last}"
    return f"{first} {last}"


def address_book_number(k: int) -> str:
    """The k-th number of the address book beyond the inbox's patients: stored only, never
    texted (555 numbers of the owned area codes, which no patient of the pool uses, outside
    the 555-01XX block the service's own numbers come from)."""
    code, n = divmod(k, 9_900)
    return f"+1{valid_area_codes()[code]}555{n if n < 100 else n + 100:04d}"

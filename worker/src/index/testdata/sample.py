import os

MAX_SIZE = 10
A = B = 2
lower = 3
_PRIVATE: int = 4
if os.name:
    HIDDEN = 5

type Alias = list[int]


def top(x):
    def inner():
        pass
    return inner


async def fetch():
    pass


class Base:
    LIMIT = 1

    def method(self):
        pass

    @staticmethod
    async def static_async():
        pass

    class Nested:
        def deep(self):
            pass

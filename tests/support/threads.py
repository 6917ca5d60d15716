"""Starting several threads at the same moment, for races on the registry database."""
import threading
from typing import Callable, List


def run_in_threads(count: int, target: Callable[[int], object]) -> List[object]:
    """Runs target(0) … target(count - 1) in threads released together; each result, or the
    exception it raised, in order."""
    barrier = threading.Barrier(count)
    results: List[object] = [None] * count

    def worker(index: int) -> None:
        barrier.wait()
        try:
            results[index] = target(index)
        except Exception as error:  # collected and asserted by the test
            results[index] = error

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results

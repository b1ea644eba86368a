import memspan


@memspan.phase("load_data")        # decorator at import time, as README's API section shows
def load_data():
    return [1, 2, 3]

def main():
    memspan.configure(service_name="trainer")
    with memspan.phase("train"):
        load_data()
    memspan.shutdown()
main()

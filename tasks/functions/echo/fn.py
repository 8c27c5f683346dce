# tinyFaaS's shape: the input as text (None when there is none), the output as text.
def fn(input):
    return input

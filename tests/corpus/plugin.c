/* The library that the corpus's python3 and C programs dlopen() and dlclose() in threads: a
 * function and some data of its own, so each dlclose() really unmaps an object. */
static const int corpus_plugin_table[4] = { 3, 5, 7, 11 };

int corpus_plugin_mix(int a, int b)
{
    return a * 1000 + b * corpus_plugin_table[(a + b) & 3];
}

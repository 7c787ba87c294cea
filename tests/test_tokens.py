from pauserec import tokens


def test_sid_token_round_trip():
    codes = [12, 3, 200, 0]
    text = tokens.sid_string(codes)
    assert text == "<a_12><b_3><c_200><d_0>"
    assert tokens.parse_sid(text) == list(enumerate(codes))


def test_vocabulary_covers_every_code_once():
    vocab = tokens.vocabulary([2, 3])
    assert vocab == ["<a_0>", "<a_1>", "<b_0>", "<b_1>", "<b_2>"]
    special = tokens.special_tokens([2])
    assert special[-3:] == [tokens.PAUSE, tokens.THINK_OPEN, tokens.THINK_CLOSE]
    assert tokens.is_sid_token("<b_7>") and not tokens.is_sid_token(tokens.PAUSE)

/*
 * test_mask.c
 *		Unit tests of the masking of personal values (mask.c) and of
 *		personal values inside JSON documents (json.c): known answers,
 *		multi-byte names, short values, NULL, malformed phone numbers.
 *
 * Linked into test_mapping, which calls test_mask().
 */
#define SHIPSYNC_PLAIN_C
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pg_shipsync.h"
#include "unit.h"

void		test_mask(void);

/* mask(kind, in) == want; prints the difference otherwise */
static int
masks(int kind, const char *in, const char *want)
{
	char	   *got = shipsync_mask_pii(kind, in);
	int			ok = (got == NULL && want == NULL) ||
		(got != NULL && want != NULL && strcmp(got, want) == 0);

	if (!ok)
		printf("# mask(%d, \"%s\") = \"%s\", want \"%s\"\n", kind, in ? in : "(null)",
			   got ? got : "(null)", want ? want : "(null)");
	free(got);
	return ok;
}

static void
test_values(void)
{
	check(masks(PII_NAME, "张三", "张*") &&
		  masks(PII_NAME, "欧阳娜娜", "欧***") &&
		  masks(PII_NAME, "  王小明\u3000", "王**") &&
		  masks(PII_NAME, "张", "*") &&
		  masks(PII_NAME, "김민준", "김**"),
		  "name: a CJK name keeps its first character, a star for each other one");
	check(masks(PII_NAME, "John Smith", "J*** Smith") &&
		  masks(PII_NAME, "Mary Jane  Watson", "M*** J*** Watson") &&
		  masks(PII_NAME, "Madonna", "M******") &&
		  masks(PII_NAME, "J", "*") &&
		  masks(PII_NAME, "Łukasz Żółć", "Ł***** Żółć") &&
		  masks(PII_NAME, "Анна Иванова", "А*** Иванова"),
		  "name: other scripts keep the last word and the initials of the others");
	check(masks(PII_NAME, "Jane Doe 13812345678", "J*** Doe ***********") &&
		  masks(PII_NAME, "Jane Doe (13812345678)", "J*** Doe *************") &&
		  masks(PII_NAME, "Jane 13812345678 Doe", "J*** *********** Doe") &&
		  masks(PII_NAME, "Jane Doe １３８", "J*** Doe ***") &&
		  masks(PII_NAME, "Madonna 13812345678", "M****** ***********"),
		  "name: a word with a digit is no family name, and is stars whole");
	check(masks(PII_NAME, "", "") && masks(PII_NAME, "   ", "") &&
		  masks(PII_NAME, NULL, NULL) && masks(PII_PHONE, NULL, NULL) &&
		  masks(PII_ADDRESS, NULL, NULL) && masks(PII_EMAIL, NULL, NULL),
		  "empty stays empty, NULL stays NULL");

	check(masks(PII_PHONE, "13812345678", "138****5678") &&
		  masks(PII_PHONE, "138-1234-5678", "138****5678") &&
		  masks(PII_PHONE, "+86 138 1234 5678", "138****5678") &&
		  masks(PII_PHONE, "0086 13812345678", "138****5678") &&
		  masks(PII_PHONE, "(010) 6552-9988", "010****9988") &&
		  masks(PII_PHONE, "+44 20 7946 0958", "+442*****0958"),
		  "phone: first three and last four digits, separators and +86 dropped");
	check(masks(PII_PHONE, "12345678", "12****78") &&
		  masks(PII_PHONE, "1234567", "1****67") &&
		  masks(PII_PHONE, "123456", "***") &&
		  masks(PII_PHONE, "138-1234-567x", "***") &&
		  masks(PII_PHONE, "call me", "***") &&
		  masks(PII_PHONE, "++8613812345678", "***") &&
		  masks(PII_PHONE, "１３８１２３４５６７８", "***") &&
		  masks(PII_PHONE, "1234567890123456789012345678901234567890123456789012345678901234567890", "***"),
		  "phone: short, lettered or malformed numbers are *** whole, and at least four digits are hidden");

	check(masks(PII_ADDRESS, "深圳市南山区科技园南区10栋", "深圳市南山区***") &&
		  masks(PII_ADDRESS, "上海市浦东新区世纪大道 100 号", "上海市浦东新区***") &&
		  masks(PII_ADDRESS, "江苏省宿迁市沭阳县胡集镇", "江苏省宿迁市沭阳县***") &&
		  masks(PII_ADDRESS, "内蒙古自治区锡林郭勒盟正蓝旗上都镇", "内蒙古自治区***") &&
		  masks(PII_ADDRESS, "阳光小区5栋301", "***") &&
		  masks(PII_ADDRESS, "广东省深圳市，南山区科技园", "广东省深圳市，***") &&
		  masks(PII_ADDRESS, "广东省 深圳市 南山区 科技园路1号", "广东省 深圳市 南山区***"),
		  "address: cut after the district (not 小区 or 社区), or after the first comma");
	check(masks(PII_ADDRESS, "张三 13812345678 广东省深圳市南山区科技园路1号", "***") &&
		  masks(PII_ADDRESS, "收货人:张三 手机:13812345678 地址:广东省深圳市南山区", "***") &&
		  masks(PII_ADDRESS, "440301199001011234 深圳市南山区", "***") &&
		  masks(PII_ADDRESS, "zhang@example.com 深圳市南山区", "***") &&
		  masks(PII_ADDRESS, "张三，13812345678，深圳市南山区", "***") &&
		  masks(PII_ADDRESS, "张三、深圳市南山区", "***") &&
		  masks(PII_ADDRESS, "幸福社区东门，3号楼", "***") &&
		  masks(PII_ADDRESS, "12 Main St, Springfield, IL", "***"),
		  "address: a part kept that is not region names only (a name, a phone, a street) is *** whole");
	check(masks(PII_ADDRESS, "Flat 3, 深圳市南山区", "***") &&
		  masks(PII_ADDRESS, "221B Baker Street", "***") &&
		  masks(PII_ADDRESS, "区", "***") &&
		  masks(PII_ADDRESS, "", ""),
		  "address: whichever cut comes first; neither: *** whole");

	check(masks(PII_EMAIL, "zhang.san@example.com", "z***@example.com") &&
		  masks(PII_EMAIL, "a@x.cn", "a***@x.cn") &&
		  masks(PII_EMAIL, "张三@例子.中国", "张***@例子.中国") &&
		  masks(PII_EMAIL, "nobody", "***") &&
		  masks(PII_EMAIL, "@example.com", "***") &&
		  masks(PII_EMAIL, "zhang@", "***"),
		  "email: first character of the local part, then the domain; otherwise ***");
	check(masks(PII_EMAIL, "zhang.san@example.com; li.si@example.org", "z***@example.com***") &&
		  masks(PII_EMAIL, "zhang.san@example.com li.si@example.org", "z***@example.com***") &&
		  masks(PII_EMAIL, "zhang@example.com，li@example.org", "z***@example.com***") &&
		  masks(PII_EMAIL, "zhang@example.com\u3001li@example.org", "z***@example.com***") &&
		  masks(PII_EMAIL, "zhang@example.com (13812345678)", "z***@example.com***") &&
		  masks(PII_EMAIL, "Zhang San <zhang.san@example.com>", "Z***@example.com***") &&
		  masks(PII_EMAIL, "zhang@ example.com", "***") &&
		  masks(PII_EMAIL, "zhang@ＥＸ.com", "z***@ＥＸ.com"),
		  "email: the domain ends where a domain cannot go on; what follows is ***");

	check(masks(PII_NAME, "\xe5\xbc\xa0\xff\xe4", "\xe5\xbc\xa0**") &&
		  masks(PII_ADDRESS, "\xe5\x8c", "***") &&
		  masks(PII_EMAIL, "\xe5\x8c@x", "\xe5***@x"),
		  "malformed UTF-8 counts byte by byte and is never cut inside a sequence");

	check(shipsync_pii_kind("phone") == PII_PHONE && shipsync_pii_kind("email") == PII_EMAIL &&
		  shipsync_pii_kind("Phone") == PII_NONE && shipsync_pii_kind(NULL) == PII_NONE,
		  "kinds by their names in field_map.pii");
}

static void
test_columns(void)
{
	check(shipsync_pii_column_kind("customer") == PII_NAME &&
		  shipsync_pii_column_kind("receiver_name") == PII_NAME &&
		  shipsync_pii_column_kind("Full_Name") == PII_NAME &&
		  shipsync_pii_column_kind("name") == PII_NAME &&
		  shipsync_pii_column_kind("phone") == PII_PHONE &&
		  shipsync_pii_column_kind("receiver_phone") == PII_PHONE &&
		  shipsync_pii_column_kind("mobile") == PII_PHONE &&
		  shipsync_pii_column_kind("address") == PII_ADDRESS &&
		  shipsync_pii_column_kind("receiver_address") == PII_ADDRESS &&
		  shipsync_pii_column_kind("address_line1") == PII_ADDRESS &&
		  shipsync_pii_column_kind("email") == PII_EMAIL &&
		  shipsync_pii_column_kind("e_mail") == PII_EMAIL &&
		  shipsync_pii_column_kind("email_address") == PII_EMAIL,
		  "column convention: the usual names of personal columns");
	check(shipsync_pii_column_kind("id") == PII_NONE &&
		  shipsync_pii_column_kind("customer_id") == PII_NONE &&
		  shipsync_pii_column_kind("cargo_name") == PII_NONE &&
		  shipsync_pii_column_kind("waybill_no") == PII_NONE &&
		  shipsync_pii_column_kind("telemetry") == PII_NONE &&
		  shipsync_pii_column_kind("") == PII_NONE &&
		  shipsync_pii_column_kind(NULL) == PII_NONE,
		  "column convention: ids, cargo and other columns are not personal");
	check(shipsync_pii_column_kind("receiverPhone") == PII_PHONE &&
		  shipsync_pii_column_kind("ReceiverPhone") == PII_PHONE &&
		  shipsync_pii_column_kind("phone2") == PII_PHONE &&
		  shipsync_pii_column_kind("mobileNo") == PII_PHONE &&
		  shipsync_pii_column_kind("receiverName") == PII_NAME &&
		  shipsync_pii_column_kind("EMail") == PII_EMAIL &&
		  shipsync_pii_column_kind("idCard") == PII_ID_NUMBER &&
		  shipsync_pii_column_kind("IDCard") == PII_ID_NUMBER &&
		  shipsync_pii_column_kind("id_number") == PII_ID_NUMBER &&
		  shipsync_pii_column_kind("passportNo") == PII_ID_NUMBER &&
		  shipsync_pii_column_kind("orderIdNo") == PII_NONE &&
		  shipsync_pii_column_kind("customerId") == PII_NONE &&
		  shipsync_pii_column_kind("hotelName") == PII_NONE,
		  "column convention: camelCase, PascalCase, a number at the end, ID numbers");
	check(masks(PII_ID_NUMBER, "440301199001011234", "**************1234") &&
		  masks(PII_ID_NUMBER, "1234567", "*******"),
		  "id_number: the last four characters of eight or more");
	check(masks(PII_TEXT, "电话13912345678，3号门", "电话*******5678，3号门") &&
		  masks(PII_TEXT, "call 139-1234-5678", "call ***-****-5678") &&
		  masks(PII_TEXT, "on 2026-12-07, door 12", "on 2026-12-07, door 12") &&
		  shipsync_pii_column_kind("deliveryRemark") == PII_TEXT &&
		  shipsync_pii_column_kind("notes") == PII_TEXT,
		  "text: runs of seven digits or more keep their last four");
}

static char *
mask_cb(int kind, const char *value, void *arg __attribute__((unused)))
{
	return shipsync_mask_pii(kind, value);
}

static int
member_cb(const char *member, void *arg __attribute__((unused)))
{
	return shipsync_pii_column_kind(member);
}

/* the document masked at paths (and its order members), compared to want */
static int
json_masks(const char *doc, int n, const char *const *paths, const int *kinds,
		   const char *want)
{
	MapPath		p[8];
	char		err[128];
	char	   *out = NULL;
	bool		ok;
	int			good;

	for (int i = 0; i < n; i++)
		if (!shipsync_path_parse(paths[i], &p[i], err, sizeof(err)))
			return 0;
	ok = shipsync_json_mask(doc, strlen(doc), n, p, kinds, "order", member_cb, mask_cb,
							NULL, &out);
	good = ok && ((want == NULL && out == NULL) ||
				  (want != NULL && out != NULL && strcmp(out, want) == 0));
	if (!good)
		printf("# masked %s: %s, want %s\n", doc, out ? out : "(nothing)", want ? want : "(nothing)");
	for (int i = 0; i < n; i++)
		shipsync_path_free(&p[i]);
	free(out);
	return good;
}

static void
test_documents(void)
{
	static const char *const sf_paths[] = {
		"contactInfoList[contactType=2].contact",
		"contactInfoList[contactType=2].mobile",
		"contactInfoList[contactType=2].address",
		"cargoDetails[0].name"
	};
	static const int sf_kinds[] = {PII_NAME, PII_PHONE, PII_ADDRESS, PII_NAME};
	char	   *out = NULL;

	check(json_masks("{\"orderId\":\"7\",\"contactInfoList\":[{\"contactType\":1,\"contact\":\"顺丰\"},"
					 "{\"contactType\":2,\"contact\":\"张三\",\"mobile\":13812345678,"
					 "\"address\":\"深圳市南山区科技园\"}],\"cargoDetails\":[{\"name\":\"手机\"}]}",
					 4, sf_paths, sf_kinds,
					 "{\"orderId\":\"7\",\"contactInfoList\":[{\"contactType\":1,\"contact\":\"顺丰\"},"
					 "{\"contactType\":2,\"contact\":\"张*\",\"mobile\":\"138****5678\","
					 "\"address\":\"深圳市南山区***\"}],\"cargoDetails\":[{\"name\":\"手*\"}]}"),
		  "document: values at filtered and indexed paths masked, a number becomes a string, the rest unchanged");
	check(json_masks("{\"order_ref\":\"1\",\"order\":{\"id\":1,\"customer\":\"John Smith\","
					 "\"phone\":null,\"address\":\"1 High St, Leeds\",\"waybill_no\":\"SF1\"}}",
					 0, NULL, NULL,
					 "{\"order_ref\":\"1\",\"order\":{\"id\":1,\"customer\":\"J*** Smith\","
					 "\"phone\":null,\"address\":\"***\",\"waybill_no\":\"SF1\"}}"),
		  "document: the generic body's order members by the column convention; null stays null");
	check(json_masks("{\"order_ref\":\"1\",\"order\":{\"id\":1}}", 0, NULL, NULL, NULL) &&
		  json_masks("{\"a\":{\"b\":\"x\"}}", 1, (const char *const[]) {"a.c"},
					 (const int[]) {PII_NAME}, NULL),
		  "document: nothing personal, nothing returned");
	check(json_masks("{\"r\":{\"who\":{\"n\":\"张三\",\"tags\":[\"李四\",true]}}}", 1,
					 (const char *const[]) {"r.who"}, (const int[]) {PII_NAME},
					 "{\"r\":{\"who\":{\"n\":\"张*\",\"tags\":[\"李*\",true]}}}"),
		  "document: an object at a personal path is masked all through");
	check(!shipsync_json_mask("{\"a\":", 5, 0, NULL, NULL, "order", member_cb, mask_cb, NULL, &out) &&
		  out == NULL,
		  "document: not JSON is refused");
	{
		const char *doc = "{\"order\":{\"ship\":{\"to\":[{\"receiverPhone\":\"13812345678\"}]}}}";
		char	   *nested = NULL;

		check(shipsync_json_mask(doc, strlen(doc), 0, NULL, NULL, "order", member_cb, mask_cb, NULL, &nested) &&
			  nested != NULL && strstr(nested, "138****5678") != NULL && strstr(nested, "13812345678") == NULL,
			  "document: a personal member inside a json column of the order is masked");
		free(nested);
	}
}

void
test_mask(void)
{
	test_values();
	test_columns();
	test_documents();
}
